"""Cameras of a reconstruction as ground-truth-style projection matrices, and camera tracks built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner

from matcher.cli import main
from matcher.config import load_config
from matcher.training.datasets import load_patch_set, reconstruct_scene
from matcher.training.gt_cameras import (
    camera_undistorter,
    covisible_pairs,
    load_reconstruction,
    load_scene_cameras,
    reconstruction_cameras,
    reconstruction_undistorters,
)
from matcher.training.gt_tracks import project
from conftest import SMALL_SCENE_NAMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`match --reconstruct` (rootsift preset) of four 400x267 entry-P10 photos."""
    work = tmp_path_factory.mktemp("rec")
    return reconstruct_scene(tiny, work, load_config("rootsift"), progress=False)


def _fundamental(Pi: np.ndarray, Pj: np.ndarray) -> np.ndarray:
    e = Pj @ np.append(-np.linalg.solve(Pi[:, :3], Pi[:, 3]), 1.0)
    return np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]]) @ Pj @ np.linalg.pinv(Pi)


def _epipolar_px(F: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lines = np.hstack([a, np.ones((len(a), 1))]) @ F.T
    return np.abs((lines[:, :2] * b).sum(1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1)


def test_undistorter_inverts_colmaps_projection_in_the_pipelines_pixel_frame() -> None:
    camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 1000.0, 1600, 1000)
    camera.params = [1000.0, 800.5, 500.5, -0.15]
    normalised = np.array([[-0.7, -0.45], [0.0, 0.0], [0.3, -0.2], [0.75, 0.48]])
    detected = camera.img_from_cam(np.hstack([normalised, np.ones((4, 1))])) - 0.5  # COLMAP centres at +0.5
    ideal = normalised * 1000.0 + [800.0, 500.0]  # pinhole K, integer pixel centres
    assert np.abs(detected - ideal).max() > 20  # the distortion is large at the corners
    np.testing.assert_allclose(camera_undistorter(camera)(detected), ideal, atol=1e-6)
    camera.params = [1000.0, 800.5, 500.5, 0.0]
    np.testing.assert_array_equal(camera_undistorter(camera)(detected), detected)


def test_reconstruction_cameras_agree_with_ground_truth_and_the_observations(model: Path, entry_p10: Path) -> None:
    rec = load_reconstruction(model.parent)  # a folder holding 0/ works too
    cameras = reconstruction_cameras(model)
    undistort = reconstruction_undistorters(rec)
    assert list(cameras) == sorted(SMALL_SCENE_NAMES) == sorted(undistort)
    truth = load_scene_cameras(entry_p10.parent)
    to_tiny = np.array([[400 / 1600, 0, 0.5 * 400 / 1600 - 0.5], [0, 267 / 1067, 0.5 * 267 / 1067 - 0.5], [0, 0, 1]])
    for P in cameras.values():
        assert P.shape == (3, 4) and np.isclose(np.linalg.norm(P[2, :3]), 1.0)
    observations: dict[str, dict[int, np.ndarray]] = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        points = [p for p in image.points2D if p.has_point3D()]
        xy = undistort[image.name](np.array([p.xy for p in points]) - 0.5)
        X = np.array([rec.points3D[p.point3D_id].xyz for p in points])
        reprojected, depth = project(cameras[image.name], X)
        assert (depth > 0).all()
        assert np.median(np.linalg.norm(reprojected - xy, axis=1)) < 0.5
        observations[image.name] = {p.point3D_id: q for p, q in zip(points, xy)}
    pairs = covisible_pairs(rec, min_shared=30)
    assert pairs and all(a < b for a, b in pairs)
    for a, b in pairs:
        common = sorted(set(observations[a]) & set(observations[b]))
        assert len(common) >= 30
        xa = np.array([observations[a][i] for i in common])
        xb = np.array([observations[b][i] for i in common])
        # The same correspondences fit the ground-truth epipolar geometry: same pixel frame, distortion removed.
        F_truth = _fundamental(to_tiny @ truth[a], to_tiny @ truth[b])
        assert np.median(_epipolar_px(F_truth, xa, xb)) < 1.0
        assert np.median(_epipolar_px(_fundamental(cameras[a], cameras[b]), xa, xb)) < 1.0


def test_dataset_cameras_from_a_reconstruction(model: Path, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "tracks.h5"
    result = CliRunner().invoke(main, ["dataset", "cameras", str(tiny), "--reconstruction", str(model),
                                       "--out", str(out), "--pipeline", "rootsift"])
    assert result.exit_code == 0, result.output
    patch_set = load_patch_set(out)
    assert patch_set.num_identities >= 20
    assert np.bincount(patch_set.labels.numpy()).min() >= 3  # every track confirmed in a third view
    assert set(patch_set.names) == set(SMALL_SCENE_NAMES)
    missing = CliRunner().invoke(main, ["dataset", "cameras", str(tiny), "--reconstruction", str(tiny),
                                        "--out", str(tmp_path / "x.h5")])
    assert missing.exit_code != 0 and "no COLMAP model" in missing.output


def test_dataset_cameras_clean_track_rule(model: Path, tiny: Path, tmp_path: Path) -> None:
    """``--tracks clean`` reaches build_tracks: fewer tracks than the published rule, each seen in 4+ views."""
    tracks, views = {}, {}
    for rule in ("published", "clean"):
        out = tmp_path / f"{rule}.h5"
        result = CliRunner().invoke(main, ["dataset", "cameras", str(tiny), "--reconstruction", str(model),
                                           "--out", str(out), "--pipeline", "rootsift", "--tracks", rule])
        assert result.exit_code == 0, result.output
        patch_set = load_patch_set(out)
        tracks[rule] = patch_set.num_identities
        views[rule] = np.bincount(patch_set.labels.numpy()).min()
        _check_rays_meet_at_each_track_point(patch_set, model)
    assert 0 < tracks["clean"] < tracks["published"]
    assert views["published"] == 3 and views["clean"] >= 4  # TRACK_RULES["clean"].min_views
    assert "published" in CliRunner().invoke(main, ["dataset", "cameras", "--help"]).output  # the default


def _check_rays_meet_at_each_track_point(patch_set, model: Path) -> None:
    """The stored rays (N, 3) are unit vectors from one 3D point per track to the cameras of its views: the lines
    camera centre - t * ray of a track's views meet (least-squares point within 0.1 % of the camera distance)."""
    assert patch_set.rays is not None and patch_set.rays.shape == (len(patch_set), 3)
    rays = patch_set.rays.numpy().astype(np.float64)
    assert np.allclose(np.linalg.norm(rays, axis=1), 1.0, atol=1e-5)
    rec = load_reconstruction(model)
    centre = {im.name: im.projection_center() for im in rec.images.values()}
    centres = np.stack([centre[patch_set.names[p]] for p in patch_set.photo.numpy()])
    labels = patch_set.labels.numpy()
    spread = []
    for track in np.unique(labels):
        rows = np.flatnonzero(labels == track)
        proj = np.eye(3)[None] - rays[rows, :, None] * rays[rows, None, :]  # onto each line's normal plane
        point = np.linalg.solve(proj.sum(0), np.einsum("nij,nj->i", proj, centres[rows]))
        off = np.linalg.norm(np.einsum("nij,nj->ni", proj, point - centres[rows]), axis=1)
        spread.append(off.max() / np.linalg.norm(point - centres[rows], axis=1).mean())
    assert np.max(spread) < 1e-3
