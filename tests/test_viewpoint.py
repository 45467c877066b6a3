"""Affine shapes, view synthesis and matching on demand (matcher.affine_shape, matcher.view_synthesis,
matcher.on_demand): geometry on synthetic blobs, then real photos warped with a known tilt through the real
pipeline into a COLMAP database read back by pycolmap."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import require_shared
from matcher.config import DetectionConfig, load_config
from matcher.detect import Keypoints
from matcher.evaluation.homography import corner_error
from matcher.evaluation.viewpoint import make_tilted_pair
from matcher.view_synthesis import detect_on_views, keypoints_to_original, synthesize_view, view_longitudes


def _blob_image(size: int, centres: np.ndarray, covariances: list[np.ndarray]) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), 50.0)
    for c, C in zip(centres, covariances):
        d = np.stack([xx - c[0], yy - c[1]], -1)
        image += 170.0 * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(C), d))
    return np.clip(image, 0, 255).astype(np.uint8)


def _rotation(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


# ----------------------------------------------------------------------------------------------- affine shape


@pytest.mark.parametrize("warp", [
    np.diag([1.0, 1.0]),
    np.diag([1.0, 1.0 / 3.0]) @ _rotation(30.0),  # tilt 3 along a direction 30 degrees off the axes
    np.array([[1.6, 0.5], [0.0, 0.6]]),           # shear
])
def test_affine_shape_is_covariant(warp, one_torch_thread):
    """A round blob warped by M is an ellipse of covariance M Mᵀ: the estimated frame A (determinant 1) must
    satisfy A Aᵀ = M Mᵀ / |det M| within 5 % (the orientation, a rotation on the right of A, is free)."""
    from matcher.affine_shape import estimate_affine_shapes

    sigma, centre = 7.0, np.array([[100.0, 100.0]])
    image = _blob_image(201, centre, [sigma**2 * warp @ warp.T])
    keypoints = Keypoints(centre.astype(np.float32), np.array([sigma * math.sqrt(abs(np.linalg.det(warp)))], np.float32),
                          np.zeros(1, np.float32), np.ones(1, np.float32))
    shaped = estimate_affine_shapes(image, keypoints)
    A = shaped.shapes[0].astype(np.float64)
    expected = warp @ warp.T / abs(np.linalg.det(warp))
    assert abs(np.linalg.det(A) - 1.0) < 1e-4
    assert np.abs(A @ A.T - expected).max() < 0.05 * np.abs(expected).max()
    assert np.isclose(shaped.orientations[0], math.atan2(A[0, 1], A[0, 0]), atol=1e-5)


def test_affine_detection_samples_affine_patches(one_torch_thread):
    """detection.affine = true: keypoints carry shapes through rescaling, and LAFs are built from them."""
    from matcher.detect import detect_keypoints
    from matcher.patches import lafs_from_keypoints

    rng = np.random.default_rng(1)
    centres = rng.uniform(20, 180, (12, 2))
    image = _blob_image(200, centres, [np.diag([16.0, 4.0])] * 12)
    keypoints = detect_keypoints(image, DetectionConfig(affine=True, max_keypoints=64))
    assert keypoints.shapes is not None and keypoints.shapes.shape == (len(keypoints), 2, 2)
    full = keypoints.rescaled(2.0, 2.0)
    lafs = lafs_from_keypoints(full, 6.0)[0].numpy()
    assert np.allclose(lafs[:, :, 2], full.xy, atol=1e-4)
    assert np.allclose(np.abs(np.linalg.det(lafs[:, :, :2])), (6.0 * full.scales) ** 2, rtol=1e-3)
    # blobs twice as wide as tall: the frames' ellipses are elongated along x
    ellipses = keypoints.shapes @ np.transpose(keypoints.shapes, (0, 2, 1))
    assert np.median(ellipses[:, 0, 0] / ellipses[:, 1, 1]) > 2.0


# ----------------------------------------------------------------------------------------------- view synthesis


def test_view_longitudes_follow_asift():
    assert view_longitudes(2.0) == pytest.approx([0, 36, 72, 108, 144])
    assert len(view_longitudes(4.0)) == 10 and len(view_longitudes(8.0)) == 20
    assert view_longitudes(1.0) == [0.0]


@pytest.mark.parametrize("tilt", [2.0, 4.0])
def test_keypoints_map_back_to_the_same_pixels(tilt, one_torch_thread):
    """Blobs at known pixels, found on every view of a tilt (60 % of those whole on the view at least): mapped
    back, each lands within 0.5 px of its blob, and the patch sampled from the original through the mapped affine frame is the view's patch."""
    from matcher.patches import extract_patches, lafs_from_keypoints

    grid = np.array([[x, y] for x in range(40, 330, 50) for y in range(40, 330, 50)], np.float64)
    image = _blob_image(370, grid, [np.eye(2) * 16.0] * len(grid))
    for view, in_view, in_image in detect_on_views(image, tilt, DetectionConfig(), 512):
        assert len(in_view) > 0, f"nothing found on the view at longitude {view.longitude}"
        inside = (grid @ view.affine[:, :2].T + view.affine[:, 2]).round().astype(int)
        room = cv2.distanceTransform(view.mask, cv2.DIST_L2, 3)  # blobs whose 3-sigma disc is whole on the view
        visible = room[np.clip(inside[:, 1], 0, room.shape[0] - 1), np.clip(inside[:, 0], 0, room.shape[1] - 1)] > 12
        distances = np.linalg.norm(in_image.xy[None, :, :] - grid[:, None, :], axis=2).min(axis=1)
        # DoG misses some blobs squeezed to an aspect of 2 (9 of 36 at longitude 72: no scale-space extremum,
        # OpenCV's detector alone on the view gives the same); those it finds must sit on them
        found = visible & (distances < 3.0)
        assert visible.sum() >= len(grid) // 2 and found.sum() >= 0.6 * visible.sum()
        assert np.all(distances[found] < 0.5), (view.longitude, distances[found].max())
        # the same pixels: patches through the mapped affine LAFs vs through the view's own LAFs
        near = np.linalg.norm(in_image.xy[:, None] - grid[None], axis=2).min(axis=1) < 0.5
        original = extract_patches(image, lafs_from_keypoints(in_image.select(near), 3.0)).numpy()
        on_view = extract_patches(view.image, lafs_from_keypoints(in_view.select(near), 3.0)).numpy()
        correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(original, on_view)]
        assert np.median(correlation) > 0.95


def test_mapping_is_exact_for_a_point():
    """keypoints_to_original inverts the view's affine exactly (shapes included)."""
    view = synthesize_view(np.zeros((100, 160), np.uint8), 2.83, 47.0)
    xy = np.array([[10.0, 20.0], [55.5, 70.25]])
    in_view = Keypoints((xy @ view.affine[:, :2].T + view.affine[:, 2]).astype(np.float32),
                        np.array([2.0, 3.0], np.float32), np.array([0.3, -1.0], np.float32), np.ones(2, np.float32))
    back = keypoints_to_original(in_view, view.affine)
    assert np.allclose(back.xy, xy, atol=1e-3)
    # the mapped frame sends the view's circle to the original ellipse: M (scale * shape) = view frame
    M = view.affine[:, :2]
    frames = M[None] @ (back.scales[:, None, None] * back.shapes)
    assert np.allclose(np.abs(np.linalg.det(frames)), in_view.scales**2, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- on demand


@pytest.fixture(scope="module")
def tilted_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, tuple[int, int]]:
    """A real photo (entry-P10, 560 px) and the same photo under tilt 5 (known H), in a folder."""
    photo = require_shared("scenes", "entry-P10", "images", "0003.jpg")
    gray = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
    gray = cv2.resize(gray, None, fx=560 / max(gray.shape), fy=560 / max(gray.shape), interpolation=cv2.INTER_AREA)
    view, H = make_tilted_pair(gray, 5.0, 30.0, 120.0, 0.1)
    folder = tmp_path_factory.mktemp("tilted")
    cv2.imwrite(str(folder / "a.png"), gray)
    cv2.imwrite(str(folder / "b.png"), view)
    return folder, H, (gray.shape[1], gray.shape[0])


def _config(preset: str, **viewpoint):
    overrides = [{"images": {"max_edge": 0}, "detection": {"max_keypoints": 1500}, "descriptor": {"name": "rootsift"},
                  "viewpoint": {"view_keypoints": 400, **viewpoint}}]
    return load_config(preset, overrides)


@pytest.fixture(scope="module")
def viewpoint_run(tilted_pair, tmp_path_factory):
    from matcher.pipeline import run_match

    folder, _, _ = tilted_pair
    out = tmp_path_factory.mktemp("viewpoint_run")
    default = run_match(folder, out / "default.db", _config("default"), progress=False)
    report = run_match(folder, out / "viewpoint.db", _config("viewpoint"), progress=False)
    return out, default, report


def test_default_fails_and_viewpoint_succeeds(viewpoint_run, tilted_pair):
    """End to end: the plain pass does not verify the tilt-5 pair; matching on demand does, and stops there,
    and the database (read back by pycolmap) holds the appended keypoints and a correct verified homography."""
    import pycolmap

    out, default, report = viewpoint_run
    _, H_true, (width, height) = tilted_pair
    assert default.pairs_verified == 0
    assert report.pairs_verified == 1
    [retry] = report.on_demand
    assert 1 <= retry.step == retry.steps  # stopped at the first step that verified (step 2, tilt 4, here)
    from matcher.storage import FeatureStore

    with FeatureStore(out / "viewpoint.features.h5", "r") as features:
        normal = {name: len(features.read(name)) for name in ("a.png", "b.png")}
    with pycolmap.Database.open(str(out / "viewpoint.db")) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        keypoints = {name: db.read_keypoints(i)[:, :2] - 0.5 for name, i in ids.items()}
        geometry = db.read_two_view_geometry(ids["a.png"], ids["b.png"])
        inliers = np.asarray(geometry.inlier_matches)
    assert all(len(keypoints[n]) > normal[n] for n in normal)  # view keypoints appended after the normal ones
    assert len(inliers) >= 30 and (inliers[:, 0] >= normal["a.png"]).any()
    H, _ = cv2.findHomography(keypoints["a.png"][inliers[:, 0]], keypoints["b.png"][inliers[:, 1]], cv2.USAC_MAGSAC, 3.0)
    assert corner_error(H, H_true, width, height) < 5.0


def test_rerun_reuses_the_on_demand_results(viewpoint_run, tilted_pair):
    """A rerun finds the pair solved in views.h5 (nothing retried) and writes the same database."""
    from matcher.pipeline import run_match

    out, _, first = viewpoint_run
    folder, _, _ = tilted_pair
    again = run_match(folder, out / "viewpoint.db", _config("viewpoint"), overwrite=True, progress=False)
    assert again.on_demand == [] and again.pairs_verified == 1 and again.pairs_reused == 1
    assert again.database == first.database


def test_on_demand_respects_its_budget(tilted_pair, tmp_path, caplog):
    """Two unrelated photos never verify: every step is tried once and no more, each image's views of each
    tilt are computed once, and the retry is logged with its steps and time."""
    from matcher.pipeline import run_match
    from matcher.storage import ViewStore
    from matcher.view_synthesis import view_longitudes

    folder, _, _ = tilted_pair
    other = require_shared("scenes", "lund", "images", "01.jpg")
    gray = cv2.imread(str(other), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.imread(str(folder / "a.png"), cv2.IMREAD_GRAYSCALE))
    cv2.imwrite(str(tmp_path / "z.png"), cv2.resize(gray, (480, 360), interpolation=cv2.INTER_AREA))
    caplog.set_level(logging.INFO, logger="matcher")
    report = run_match(tmp_path, tmp_path / "out" / "db.db", _config("viewpoint", tilts="2, 3"), progress=False)
    [retry] = report.on_demand
    assert (retry.step, retry.steps) == (0, 2)
    with ViewStore(tmp_path / "out" / "db.views.h5", "r") as views:
        for name in ("a.png", "z.png"):
            assert views.steps(name) == [1, 2]
            for step, tilt in ((1, 2.0), (2, 3.0)):
                n = len(views.read_step(name, step)[0])
                assert 0 < n <= 400 * len(view_longitudes(tilt))
    assert any("on demand a.png z.png: not verified after 2 step(s)" in r.getMessage() for r in caplog.records)


def test_lost_step_keypoints_resolve_the_pair_again(viewpoint_run, tilted_pair):
    """A step group of an image lost from views.h5 (as when a damaged group is dropped): the pair solved with it
    no longer indexes keypoints that are gone; it is retried, the step recomputed, and the database is the same."""
    import h5py

    from matcher.pipeline import run_match
    from matcher.storage import escape_name

    out, _, first = viewpoint_run
    folder, _, _ = tilted_pair
    with h5py.File(out / "viewpoint.views.h5", "r+") as views:
        step_groups = sorted(k for k in views if k.startswith(escape_name("a.png") + "@"))
        assert step_groups
        del views[step_groups[0]]
    again = run_match(folder, out / "viewpoint.db", _config("viewpoint"), overwrite=True, progress=False)
    assert [r.step for r in again.on_demand] == [first.on_demand[0].step]  # retried, solved at the same step
    assert again.pairs_verified == 1
    assert again.database == first.database
