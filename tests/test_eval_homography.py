"""Homography metrics: hand-made cases with known answers, plus the HPatches convention on real data."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_data
from matcher.evaluation import (
    corner_error,
    homography_accuracy,
    load_hpatches_sequence,
    mean_matching_accuracy,
    reprojection_errors,
    warp_points,
)


def churchill() -> Path:
    folder = shared_data() / "homography" / "v_churchill"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (set MATCHER_SHARED_DATA)")
    return folder


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def test_identity_gives_zero_error_and_full_mma():
    xy = np.random.default_rng(0).uniform(0, 500, (50, 2))
    errors = reprojection_errors(xy, xy, np.eye(3))
    assert errors.shape == (50,)
    np.testing.assert_array_equal(errors, 0.0)
    np.testing.assert_array_equal(mean_matching_accuracy(errors), np.ones(10))


def test_known_pixel_shift():
    xy1 = np.array([[10.0, 20.0], [0.0, 0.0], [100.0, 5.0], [7.0, 7.0], [3.0, 4.0]])
    offsets = np.array([0.0, 0.5, 1.5, 3.0, 12.0])  # extra error, alternately along x and y
    directions = np.array([[1.0, 0.0], [0.0, 1.0]] * 2 + [[-1.0, 0.0]])  # exact in binary floats
    xy2 = xy1 + [3.0, -4.0] + offsets[:, None] * directions
    errors = reprojection_errors(xy1, xy2, translation(3.0, -4.0))
    np.testing.assert_allclose(errors, offsets, atol=1e-12)
    # a translation's inverse is a translation: symmetric == one-way
    np.testing.assert_allclose(reprojection_errors(xy1, xy2, translation(3, -4), True), offsets, atol=1e-12)
    # errors 0, .5, 1.5, 3, 12 -> thresholds 1, 2, 3..10 catch 2, 3, 4 of 5
    expected = np.array([2, 3, 4, 4, 4, 4, 4, 4, 4, 4]) / 5
    np.testing.assert_allclose(mean_matching_accuracy(errors), expected)
    np.testing.assert_allclose(mean_matching_accuracy(errors, [0, 0.5, 100]), [0.2, 0.4, 1.0])


def test_symmetric_error_of_a_scaling():
    H = np.diag([2.0, 2.0, 1.0])
    # forward: H(1,1) = (2,2) vs (4,2) -> 2; backward: H^-1(4,2) = (2,1) vs (1,1) -> 1
    assert reprojection_errors([[1.0, 1.0]], [[4.0, 2.0]], H)[0] == pytest.approx(2.0)
    assert reprojection_errors([[1.0, 1.0]], [[4.0, 2.0]], H, symmetric=True)[0] == pytest.approx(1.5)


def test_error_of_a_diagonal_shift():
    xy1 = np.array([[10.0, 20.0], [30.0, 40.0]])
    xy2 = xy1 + [[0.6, 0.8], [-1.2, 1.6]]  # 3-4-5 triangles: 1 px and 2 px off
    np.testing.assert_allclose(reprojection_errors(xy1, xy2, np.eye(3)), [1.0, 2.0], rtol=1e-12)


def test_points_sent_to_infinity_are_infinite_errors_and_count_as_wrong():
    H = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])  # w = x
    assert np.isinf(warp_points([[0.0, 3.0]], H)).all()
    errors = reprojection_errors([[0.0, 3.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]], H)
    assert math.isinf(errors[0]) and errors[1] == pytest.approx(0.0)
    np.testing.assert_allclose(mean_matching_accuracy(errors, [1, 1e9]), [0.5, 0.5])


def test_mma_edge_cases():
    np.testing.assert_array_equal(mean_matching_accuracy([], [1, 2]), [0.0, 0.0])
    np.testing.assert_array_equal(mean_matching_accuracy([np.nan, 0.5], [1]), [0.5])
    with pytest.raises(ValueError):
        reprojection_errors(np.zeros((3, 2)), np.zeros((2, 2)), np.eye(3))


def test_corner_error_of_known_transforms():
    assert corner_error(translation(3.0, 4.0), np.eye(3), 640, 480) == pytest.approx(5.0)
    assert corner_error(np.eye(3), np.eye(3), 640, 480) == 0.0
    # scaling by 2 about the origin, 11x11 image: corners (0,0) (10,0) (10,10) (0,10) move by 0, 10, 10v2, 10
    expected = (0 + 10 + 10 * math.sqrt(2) + 10) / 4
    assert corner_error(np.diag([2.0, 2.0, 1.0]), np.eye(3), 11, 11) == pytest.approx(expected)
    assert corner_error(None, np.eye(3), 11, 11) == math.inf
    # H is defined up to scale
    assert corner_error(7.0 * translation(3, 4), translation(3, 4), 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_homography_accuracy():
    acc = homography_accuracy([0.5, 2.0, 4.0, 10.0, math.inf])
    assert acc == {1: pytest.approx(0.2), 3: pytest.approx(0.4), 5: pytest.approx(0.6)}
    assert homography_accuracy(np.array([1.0, 3.0]), thresholds=iter([1, 2])) == {1: 0.5, 2: 0.5}


def test_load_sequence_validates(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hpatches_sequence(tmp_path)
    for k in (1, 2):
        (tmp_path / f"{k}.ppm").write_bytes(b"")
    np.savetxt(tmp_path / "H_1_2", translation(1, 2))
    images, homographies = load_hpatches_sequence(tmp_path)
    assert [p.name for p in images] == ["1.ppm", "2.ppm"]
    np.testing.assert_array_equal(homographies[2], translation(1, 2))
    np.savetxt(tmp_path / "H_1_3", np.eye(3))
    with pytest.raises(FileNotFoundError):
        load_hpatches_sequence(tmp_path)


def test_load_real_sequence():
    images, homographies = load_hpatches_sequence(churchill())
    assert [p.name for p in images] == [f"{k}.ppm" for k in range(1, 7)]
    assert sorted(homographies) == [2, 3, 4, 5, 6]
    assert all(H.shape == (3, 3) and H.dtype == np.float64 for H in homographies.values())


def _residual_shift(image1, image2, H) -> tuple[float, np.ndarray]:
    """NCC and the translation (px) left after warping image1 by H onto image2, measured by ECC."""
    h, w = image2.shape
    warped = cv2.warpPerspective(image1, H, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.ones_like(image1), H, (w, h), flags=cv2.INTER_NEAREST)
    valid = cv2.erode((valid > 0).astype(np.uint8), np.ones((15, 15), np.uint8))
    a, b = warped[valid > 0], image2[valid > 0]
    a, b = a - a.mean(), b - b.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    _, warp = cv2.findTransformECC(
        image2, warped, np.eye(2, 3, dtype=np.float32), cv2.MOTION_TRANSLATION, criteria, valid, 5
    )
    return ncc, warp[:, 2]


def test_hpatches_homographies_use_opencv_pixel_centres():
    """Warp 1.ppm by H_1_2 (OpenCV convention) and compare with 2.ppm.

    If H_1_2 used pixel centres at +0.5 instead, T^-1 H T (T: shift by 0.5) would align better.
    """
    folder = churchill()
    images, homographies = load_hpatches_sequence(folder)

    def gray(path):
        return cv2.GaussianBlur(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32), (0, 0), 1.0)

    image1, image2 = gray(images[0]), gray(images[1])
    H = homographies[2]
    T = translation(0.5, 0.5)
    ncc, shift = _residual_shift(image1, image2, H)
    assert ncc > 0.98
    assert np.linalg.norm(shift) < 0.15
    for variant in (np.linalg.inv(T) @ H @ T, T @ H @ np.linalg.inv(T)):
        _, shift_variant = _residual_shift(image1, image2, variant)
        assert np.linalg.norm(shift) < np.linalg.norm(shift_variant)


def test_real_sift_homography_has_small_corner_error():
    folder = churchill()
    images, homographies = load_hpatches_sequence(folder)
    image1 = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE)
    image5 = cv2.imread(str(images[4]), cv2.IMREAD_GRAYSCALE)
    sift = cv2.SIFT_create(nfeatures=2000)
    k1, d1 = sift.detectAndCompute(image1, None)
    k5, d5 = sift.detectAndCompute(image5, None)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d5, k=2)
    good = [m for m, n in pairs if m.distance < 0.8 * n.distance]
    xy1 = np.float64([k1[m.queryIdx].pt for m in good])
    xy5 = np.float64([k5[m.trainIdx].pt for m in good])
    errors = reprojection_errors(xy1, xy5, homographies[5])
    mma = mean_matching_accuracy(errors)
    assert mma[2] > 0.7  # most ratio-test matches are within 3 px
    assert np.all(np.diff(mma) >= 0)
    H_est, _ = cv2.findHomography(xy1, xy5, cv2.USAC_MAGSAC, 2.0)
    h, w = image1.shape
    assert corner_error(H_est, homographies[5], w, h) < 3.0
