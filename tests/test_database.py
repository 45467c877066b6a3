"""The database a run writes, read back with pycolmap: counts, conventions, rigs/frames, verified pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from matcher.colmap_db import to_colmap_geometry
from matcher.config import load_config
from matcher.pipeline import OutputPaths, run_match
from matcher.storage import FeatureStore, MatchStore

FAST = [{"images": {"max_edge": 800}}, {"detection": {"max_keypoints": 2048}}]


@pytest.fixture(scope="module")
def run(small_scene: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("db") / "scene.db"
    config = load_config("default", FAST)
    report = run_match(small_scene, out, config, progress=False)
    return small_scene, out, config, report


def test_counts_match_the_feature_files(run) -> None:
    images, db_path, config, report = run
    paths = OutputPaths(db_path)
    with pycolmap.Database.open(db_path) as db, FeatureStore(paths.features, "r") as features:
        db_images = db.read_all_images()
        assert sorted(im.name for im in db_images) == sorted(p.name for p in images.iterdir())
        assert db.num_cameras() == 4
        total = 0
        for image in db_images:
            n = len(features.read(image.name))
            assert 500 < n <= 2048
            assert db.read_keypoints(image.image_id).shape == (n, 4)
            descriptors = db.read_descriptors(image.image_id)
            assert descriptors.type == pycolmap.FeatureExtractorType.SIFT
            assert descriptors.data.shape == (n, 128) and descriptors.data.dtype == np.uint8
            total += n
        assert db.num_keypoints() == total == report.database["keypoints"]
        assert db.num_matched_image_pairs() == 6  # exhaustive over 4 images


def test_keypoints_carry_the_half_pixel_shift_once(run) -> None:
    _, db_path, _, _ = run
    with pycolmap.Database.open(db_path) as db, FeatureStore(OutputPaths(db_path).features, "r") as features:
        for image in db.read_all_images():
            ours = features.read(image.name)
            theirs = db.read_keypoints(image.image_id)
            np.testing.assert_allclose(theirs[:, :2], ours.keypoints + 0.5, atol=1e-4)
            np.testing.assert_allclose(theirs[:, 2], ours.scales, rtol=1e-6)
            np.testing.assert_allclose(theirs[:, 3], -ours.orientations, atol=1e-6)


def test_every_image_has_a_rig_and_a_frame(run) -> None:
    _, db_path, _, _ = run
    with pycolmap.Database.open(db_path) as db:
        images = db.read_all_images()
        frames = db.read_all_frames()
        rigs = db.read_all_rigs()
        assert len(rigs) == len(images) == len(frames)
        framed = {d.id for f in frames for d in f.data_ids}
        assert framed == {im.image_id for im in images}
        for image in images:
            assert image.frame_id > 0


def test_verified_pairs_have_enough_inliers_and_consistent_geometry(run) -> None:
    images, db_path, config, _ = run
    min_inliers = config.verification.min_inliers
    with pycolmap.Database.open(db_path) as db:
        pair_ids, geometries = db.read_two_view_geometries()
        assert len(pair_ids) >= 5
        for pair_id, tvg in zip(pair_ids, geometries):
            id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
            inliers = tvg.inlier_matches
            assert len(inliers) >= min_inliers
            config_id = int(tvg.config)
            assert config_id in (3, 6)  # UNCALIBRATED with F, or PLANAR_OR_PANORAMIC with F and H
            raw = {tuple(m) for m in db.read_matches(id1, id2)}
            assert {tuple(m) for m in inliers} <= raw
            k1 = db.read_keypoints(id1)[inliers[:, 0], :2].astype(np.float64)
            k2 = db.read_keypoints(id2)[inliers[:, 1], :2].astype(np.float64)
            x1 = np.c_[k1, np.ones(len(k1))]
            x2 = np.c_[k2, np.ones(len(k2))]
            lines = x1 @ tvg.F.T  # epipolar lines in image 2, COLMAP pixel convention
            dist = np.abs(np.sum(lines * x2, 1)) / np.linalg.norm(lines[:, :2], axis=1)
            # threshold: 1 px at 800 px -> 2 px at full resolution (1600 px); MAGSAC++ may keep a little more
            assert np.median(dist) < 1.0 and np.percentile(dist, 90) < 4.0
            if config_id == 6:
                proj = x1 @ tvg.H.T
                err = np.linalg.norm(proj[:, :2] / proj[:, 2:] - k2, axis=1)
                assert np.median(err) < 2.0


def test_geometry_conversion_to_colmap_pixels() -> None:
    rng = np.random.default_rng(0)
    F = rng.standard_normal((3, 3))
    x1, x2 = rng.uniform(0, 100, (2, 5, 2))
    h = lambda x: np.c_[x, np.ones(len(x))]  # noqa: E731
    ours = np.sum(h(x2) * (h(x1) @ F.T), 1)
    theirs = np.sum(h(x2 + 0.5) * (h(x1 + 0.5) @ to_colmap_geometry("fundamental", F).T), 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    H = np.eye(3) + 0.01 * rng.standard_normal((3, 3))
    p = h(x1) @ H.T
    q = h(x1 + 0.5) @ to_colmap_geometry("homography", H).T
    np.testing.assert_allclose(p[:, :2] / p[:, 2:] + 0.5, q[:, :2] / q[:, 2:], atol=1e-9)


def test_match_file_agrees_with_database(run) -> None:
    _, db_path, _, report = run
    paths = OutputPaths(db_path)
    with pycolmap.Database.open(db_path) as db, MatchStore(paths.matches, "r") as store:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        names = sorted(ids)
        verified = 0
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair = store.read(a, b)
                np.testing.assert_array_equal(db.read_matches(ids[a], ids[b]), pair.matches)
                verified += pair.model != "none"
        assert verified == db.num_verified_image_pairs() == report.pairs_verified


def test_config_is_saved_beside_the_database_and_reloads(run) -> None:
    _, db_path, config, _ = run
    saved = OutputPaths(db_path).config
    assert saved.is_file()
    assert load_config(str(saved)) == config


def test_colmap_can_map_the_database(run, tmp_path: Path) -> None:
    images, db_path, _, _ = run
    options = pycolmap.IncrementalPipelineOptions(num_threads=2, random_seed=0, min_model_size=3)
    models = pycolmap.incremental_mapping(db_path, images, tmp_path, options=options)
    best = max(models.values(), key=lambda r: r.num_reg_images())
    assert best.num_reg_images() == 4
    assert best.compute_mean_reprojection_error() < 1.0
