"""Full runs on real scenes: every image registered, sub-pixel reprojection, poses against ground truth.

Each runs with the default preset (SDGMNet) and the rootsift preset. They take 10-40 s each on two cores; they
run where CI=true (or MATCHER_SCENE_TESTS=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_shared
from matcher.config import load_config
from matcher.evaluation.sfm import compare_to_strecha
from matcher.pipeline import run_match

pytestmark = [pytest.mark.scene, pytest.mark.parametrize("preset", ["default", "rootsift"])]


def _run(images: Path, tmp_path: Path, preset: str):
    config = load_config(preset, [{"mapping": {"num_threads": 2}}])
    report = run_match(images, tmp_path / "db.db", config, reconstruct_dir=tmp_path / "sparse", progress=False)
    assert report.reconstruction is not None
    return report


def test_sceaux_castle_registers_every_image(tmp_path: Path, preset: str) -> None:
    images = require_shared("scenes", "sceaux-castle", "images")
    report = _run(images, tmp_path, preset)
    summary = report.reconstruction
    assert report.skipped == [("K.txt", "not an image file"), ("Readme.txt", "not an image file")]
    assert summary.registered_images == summary.total_images == 11
    assert summary.mean_reprojection_error < 1.0
    assert summary.points3d > 2000


def test_entry_p10_registers_every_image_and_matches_ground_truth(tmp_path: Path, preset: str) -> None:
    import pycolmap

    images = require_shared("scenes", "entry-P10", "images")
    report = _run(images, tmp_path, preset)
    summary = report.reconstruction
    assert summary.registered_images == summary.total_images == 10
    assert summary.mean_reprojection_error < 1.0
    rec = pycolmap.Reconstruction(tmp_path / "sparse" / "0")
    errors = compare_to_strecha(rec, images.parent / "gt_dense_cameras", robust=True)
    assert errors["num_matched"] == 10
    assert errors["rotation_error_deg_median"] < 0.5, errors
