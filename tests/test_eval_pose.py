"""Pose metrics: rotation/translation errors, AUC, Strecha cameras and an essential-matrix baseline."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_data
from matcher.evaluation import (
    estimate_relative_pose,
    pose_auc,
    read_strecha_camera,
    relative_pose,
    relative_pose_error,
    rotation_angle_deg,
    scale_intrinsics,
    vector_angle_deg,
)


def entry_p10() -> Path:
    folder = shared_data() / "scenes" / "entry-P10"
    if not (folder / "gt_dense_cameras").is_dir():
        pytest.skip(f"real data not found at {folder} (set MATCHER_SHARED_DATA)")
    return folder


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * math.radians(degrees))[0]


def random_rotation(rng) -> np.ndarray:
    return rotation(rng.normal(size=3), rng.uniform(10, 170))


# --- angles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [0.0, 1e-5, 0.3, 3.0, 45.0, 90.0, 179.9, 180.0])
def test_rotation_angle_of_known_rotations(degrees):
    R = rotation([1.0, -2.0, 0.5], degrees)
    assert rotation_angle_deg(R) == pytest.approx(degrees, abs=1e-9)


def test_vector_angle():
    assert vector_angle_deg([1, 0, 0], [0, 2, 0]) == pytest.approx(90.0)
    assert vector_angle_deg([1, 0, 0], [-3, 0, 0]) == pytest.approx(180.0)
    assert vector_angle_deg([1, 0, 0], [1, 1e-7, 0]) == pytest.approx(math.degrees(1e-7), rel=1e-6)
    assert math.isnan(vector_angle_deg([0, 0, 0], [1, 0, 0]))


# --- relative pose error ----------------------------------------------------------------------------


def test_relative_pose_error_of_known_perturbations():
    rng = np.random.default_rng(1)
    R_gt = random_rotation(rng)
    t_gt = np.array([0.3, -1.0, 0.2])
    perpendicular = np.cross(t_gt, [0.0, 0.0, 1.0])
    R_est = rotation(rng.normal(size=3), 3.0) @ R_gt
    t_est = 5.0 * rotation(perpendicular, 7.0) @ t_gt  # scale does not matter
    error_R, error_t = relative_pose_error(R_est, t_est, R_gt, t_gt)
    assert error_R == pytest.approx(3.0, abs=1e-9)
    assert error_t == pytest.approx(7.0, abs=1e-9)
    assert relative_pose_error(R_gt, t_gt, R_gt, t_gt) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_translation_sign_ambiguity_flag():
    R, t = np.eye(3), np.array([1.0, 2.0, 3.0])
    assert relative_pose_error(R, -t, R, t) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert relative_pose_error(R, -t, R, t, ignore_translation_sign=False)[1] == pytest.approx(180.0)
    axis = np.cross(t, [1.0, 0.0, 0.0])
    t_100 = rotation(axis, 100.0) @ t
    assert relative_pose_error(R, t_100, R, t)[1] == pytest.approx(80.0)
    assert relative_pose_error(R, t_100, R, t, ignore_translation_sign=False)[1] == pytest.approx(100.0)


def test_relative_pose_error_failures():
    assert relative_pose_error(None, None, np.eye(3), [1, 0, 0]) == (math.inf, math.inf)
    assert relative_pose_error(np.eye(3), np.zeros(3), np.eye(3), [1, 0, 0]) == (math.inf, math.inf)
    with pytest.raises(ValueError):
        relative_pose_error(np.eye(3), [1, 0, 0], np.eye(3), np.zeros(3))


def test_relative_pose_composition():
    rng = np.random.default_rng(2)
    R1, R2 = random_rotation(rng), random_rotation(rng)
    t1, t2 = rng.normal(size=3), rng.normal(size=3)
    R, t = relative_pose(R1, t1, R2, t2)
    X = rng.normal(size=(5, 3))
    np.testing.assert_allclose((X @ R1.T + t1) @ R.T + t, X @ R2.T + t2, atol=1e-12)


# --- AUC --------------------------------------------------------------------------------------------


def test_auc_extremes():
    assert pose_auc([0.0, 0.0, 0.0]) == {t: pytest.approx(1.0) for t in (1, 2, 5, 10, 20)}
    assert pose_auc([25.0, 30.0, math.inf]) == {t: 0.0 for t in (1, 2, 5, 10, 20)}
    assert pose_auc([], thresholds=[5]) == {5: 0.0}


def test_auc_hand_computed():
    # curve through (0, 0), (1, .5), (3, 1); at t=2 it is held at .5 from e=1:
    #   t=2: (0.5 * 1 * 0.5 + 1 * 0.5) / 2 = 0.375;  t=4: (0.25 + 1.5 + 1) / 4 = 0.6875
    aucs = pose_auc([3.0, 1.0], thresholds=(2, 4))
    assert aucs == {2: pytest.approx(0.375), 4: pytest.approx(0.6875)}
    # a failure halves the recall: (0, 0) -> (0, .5) then flat
    assert pose_auc([0.0, math.inf], thresholds=[10]) == {10: pytest.approx(0.5)}
    assert pose_auc([0.0, math.nan], thresholds=[10]) == {10: pytest.approx(0.5)}
    # an error exactly at the threshold: triangle of area t/2
    assert pose_auc([2.0], thresholds=[2]) == {2: pytest.approx(0.5)}


@pytest.mark.parametrize("error", [0.0, 0.7, 2.5, 4.99])
def test_auc_single_error_closed_form(error):
    # one error e <= t: area e/2 + (t - e), so AUC = 1 - e / (2 t)
    assert pose_auc([error], thresholds=[5])[5] == pytest.approx(1 - error / 10)


# --- Strecha cameras --------------------------------------------------------------------------------


def test_scale_intrinsics_reproduces_the_shipped_downscaled_k():
    # SOURCE.txt: original 3072x2048 intrinsics fx 2759.48, fy 2764.16, cx 1520.69, cy 1006.81;
    # the shipped .camera files hold K for 1600x1067 (fx 1437.23, fy 1440.12, cx 791.786, cy 524.305)
    K = np.array([[2759.48, 0, 1520.69], [0, 2764.16, 1006.81], [0, 0, 1]])
    K_small = scale_intrinsics(K, 1600 / 3072, 1067 / 2048)
    expected = [1437.23, 1440.12, 791.786, 524.305]
    np.testing.assert_allclose([K_small[0, 0], K_small[1, 1], K_small[0, 2], K_small[1, 2]], expected, atol=0.01)
    np.testing.assert_allclose(scale_intrinsics(K_small, 3072 / 1600, 2048 / 1067), K, atol=1e-9)
    # the image's outer edge -0.5 .. W-0.5 maps onto -0.5 .. W'-0.5
    edge = scale_intrinsics(np.eye(3), 0.5, 0.5) @ [-0.5, 9.5, 1.0]
    np.testing.assert_allclose(edge, [-0.5, 4.5, 1.0])


def test_read_synthetic_camera_file(tmp_path):
    R_file = rotation([0.2, 1.0, -0.4], 30.0)
    C = np.array([1.0, -2.0, 3.0])
    K = np.array([[500.0, 0, 320.0], [0, 510.0, 240.0], [0, 0, 1]])
    def row(values):
        return " ".join(f"{v:.17g}" for v in values)

    lines = [*map(row, K), "0 0 0", *map(row, R_file), row(C), "640 480"]
    path = tmp_path / "0000.jpg.camera"
    path.write_text("\n".join(lines) + "\n")
    camera = read_strecha_camera(path)
    np.testing.assert_array_equal(camera.K, K)
    np.testing.assert_allclose(camera.R, R_file.T)
    np.testing.assert_allclose(camera.t, -R_file.T @ C)
    np.testing.assert_array_equal(camera.center, C)
    assert (camera.width, camera.height) == (640, 480)
    np.testing.assert_allclose(camera.P, K @ np.hstack([R_file.T, (-R_file.T @ C)[:, None]]))
    half = read_strecha_camera(path, image_size=(320, 240))
    assert (half.width, half.height) == (320, 240)
    np.testing.assert_allclose(half.K, [[250, 0, 159.75], [0, 255, 119.75], [0, 0, 1]])
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError):
        read_strecha_camera(path)


def test_read_real_strecha_camera_projects_into_the_image():
    folder = entry_p10()
    camera = read_strecha_camera(folder / "gt_dense_cameras" / "0000.jpg.camera")
    height, width = cv2.imread(str(folder / "images" / "0000.jpg"), cv2.IMREAD_GRAYSCALE).shape
    assert (camera.width, camera.height) == (width, height) == (1600, 1067)  # files already rescaled
    np.testing.assert_allclose(camera.R @ camera.R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(camera.R) == pytest.approx(1.0, abs=1e-12)
    R_file = np.loadtxt(folder / "gt_dense_cameras" / "0000.jpg.camera", skiprows=4, max_rows=3)
    np.testing.assert_allclose(camera.R, R_file.T, atol=1e-5)
    np.testing.assert_allclose(-camera.R.T @ camera.t, camera.center, atol=1e-12)
    # a point 10 m along the optical axis projects onto the principal point, in the image, in front
    X = camera.center + 10.0 * camera.R[2]
    xy, depth = camera.project(X[None])
    assert depth[0] == pytest.approx(10.0)
    np.testing.assert_allclose(xy[0], camera.K[:2, 2], atol=1e-6)
    # a pixel lifted to 7 m depth comes back to the same pixel, via P = K [R^T | -R^T C] too
    pixel = np.array([400.0, 300.0])
    ray = np.linalg.solve(camera.K, [*pixel, 1.0])
    X = camera.R.T @ (7.0 * ray - camera.t)
    projected = camera.P @ [*X, 1.0]
    np.testing.assert_allclose(projected[:2] / projected[2], pixel, atol=1e-6)
    assert 0 <= pixel[0] < width and 0 <= pixel[1] < height and projected[2] > 0


# --- relative pose estimation ------------------------------------------------------------------------


def _synthetic_pair(rng, n=300, outliers=60, noise=0.3):
    K = np.array([[800.0, 0, 640], [0, 800, 480], [0, 0, 1]])
    X = rng.uniform([-4, -3, 6], [4, 3, 12], size=(n, 3))
    R = rotation([0.1, 1.0, 0.2], 12.0)
    t = np.array([-1.0, 0.1, 0.2])

    def project(points):
        p = points @ K.T
        return p[:, :2] / p[:, 2:]

    xy1 = project(X) + rng.normal(scale=noise, size=(n, 2))
    xy2 = project(X @ R.T + t) + rng.normal(scale=noise, size=(n, 2))
    xy2[:outliers] = rng.uniform([0, 0], [1280, 960], size=(outliers, 2))
    return xy1, xy2, K, R, t


@pytest.mark.parametrize("method", ["magsac", "ransac"])
def test_estimate_relative_pose_on_synthetic_matches(method):
    xy1, xy2, K, R_gt, t_gt = _synthetic_pair(np.random.default_rng(3))
    R, t, inliers = estimate_relative_pose(xy1, xy2, K, K, threshold_px=1.0, method=method)
    assert t.shape == (3,) and np.linalg.norm(t) == pytest.approx(1.0)
    error_R, error_t = relative_pose_error(R, t, R_gt, t_gt, ignore_translation_sign=False)
    assert error_R < 1.0 and error_t < 3.0  # 0.3 px noise, no refinement: ~0.1-0.5 deg here
    assert inliers.dtype == bool and inliers.shape == (len(xy1),)
    assert inliers[60:].mean() > 0.9 and inliers[:60].mean() < 0.1


def test_estimate_relative_pose_edge_cases():
    assert estimate_relative_pose(np.zeros((4, 2)), np.zeros((4, 2)), np.eye(3), np.eye(3)) is None
    with pytest.raises(ValueError):
        estimate_relative_pose(np.zeros((9, 2)), np.zeros((9, 2)), np.eye(3), np.eye(3), method="lmeds")


def test_estimate_relative_pose_on_real_sift_matches():
    folder = entry_p10()
    cameras, images = [], []
    for name in ("0000.jpg", "0001.jpg"):
        image = cv2.imread(str(folder / "images" / name), cv2.IMREAD_GRAYSCALE)
        camera = read_strecha_camera(
            folder / "gt_dense_cameras" / f"{name}.camera", image_size=image.shape[::-1]
        )
        images.append(image)
        cameras.append(camera)
    sift = cv2.SIFT_create(nfeatures=4000)
    (k1, d1), (k2, d2) = (sift.detectAndCompute(image, None) for image in images)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, n in pairs if m.distance < 0.8 * n.distance]
    xy1 = np.float64([k1[m.queryIdx].pt for m in good])
    xy2 = np.float64([k2[m.trainIdx].pt for m in good])
    R, t, inliers = estimate_relative_pose(xy1, xy2, cameras[0].K, cameras[1].K, threshold_px=1.0)
    R_gt, t_gt = relative_pose(cameras[0].R, cameras[0].t, cameras[1].R, cameras[1].t)
    error_R, error_t = relative_pose_error(R, t, R_gt, t_gt, ignore_translation_sign=False)
    assert inliers.sum() > 500
    assert error_R < 2.0
    assert error_t < 5.0


def test_buddha_projection_matrices_give_cameras_that_explain_real_matches():
    """buddha's ground truth is a 3x4 P per image (cameras/STEM_P.txt): decomposed into K, R, t, the relative pose
    of 00046/00047 agrees with real SIFT matches (its SOURCE.txt: inliers at 0.36 px from the epipolar lines)."""
    from matcher.evaluation import camera_from_projection
    from matcher.evaluation.run import scene_cameras

    folder = shared_data() / "scenes" / "buddha"
    if not (folder / "cameras").is_dir():
        pytest.skip(f"real data not found at {folder} (set MATCHER_SHARED_DATA)")
    cameras = scene_cameras(folder)
    assert len(cameras) == 13 and {(c.width, c.height) for c in cameras.values()} == {(1600, 901)}
    P = np.loadtxt(folder / "cameras" / "00046_P.txt").reshape(3, 4)
    camera = camera_from_projection(P, 1600, 901)
    assert camera.K[0, 0] > 0 and camera.K[1, 1] > 0 and camera.K[2, 2] == 1.0
    assert np.linalg.det(camera.R) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(camera.P / camera.P[2, 3], P / P[2, 3], rtol=1e-7, atol=1e-9)  # same P up to scale
    a, b = cameras["00046._c.jpg"], cameras["00047._c.jpg"]
    images = [cv2.imread(str(folder / "images" / n), cv2.IMREAD_GRAYSCALE) for n in ("00046._c.jpg", "00047._c.jpg")]
    sift = cv2.SIFT_create(nfeatures=2000)
    (k1, d1), (k2, d2) = (sift.detectAndCompute(image, None) for image in images)
    good = [m for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2) if m.distance < 0.8 * n.distance]
    xy1 = np.float64([k1[m.queryIdx].pt for m in good])
    xy2 = np.float64([k2[m.trainIdx].pt for m in good])
    R, t, _ = estimate_relative_pose(xy1, xy2, a.K, b.K, threshold_px=1.0)
    error_R, error_t = relative_pose_error(R, t, *relative_pose(a.R, a.t, b.R, b.t))
    assert error_R < 2.0 and error_t < 5.0
