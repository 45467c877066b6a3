"""Pairing strategies, camera options and the EXIF focal prior, through the real CLI and database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pycolmap
import pytest
from click.testing import CliRunner

from conftest import require_shared
from matcher.cli import match_command

FAST = ["--max-edge", "640", "--max-keypoints", "1024", "-q"]


def _pairs_in(db: Path) -> set[tuple[str, str]]:
    with pycolmap.Database.open(db) as database:
        names = {im.image_id: im.name for im in database.read_all_images()}
        out = set()
        for (a, b), _ in zip(*_all_matches(database)):
            out.add(tuple(sorted((names[a], names[b]))))
        return out


def _all_matches(database: pycolmap.Database):
    pair_ids, matches = database.read_all_matches()
    return [pycolmap.pair_id_to_image_pair(p) for p in pair_ids], matches


def test_sequential_pairs_with_overlap(small_scene: Path, tmp_path: Path) -> None:
    db = tmp_path / "seq.db"
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(db), "--overlap", "1", *FAST])
    assert result.exit_code == 0, result.output
    assert _pairs_in(db) == {("0002.jpg", "0003.jpg"), ("0003.jpg", "0004.jpg"), ("0004.jpg", "0005.jpg")}


def test_pairs_file(small_scene: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0005.jpg 0002.jpg\n0003.jpg 0004.jpg\n")
    db = tmp_path / "file.db"
    result = CliRunner().invoke(match_command, [str(small_scene), "--out", str(db), "--pairs", str(pairs), *FAST])
    assert result.exit_code == 0, result.output
    assert _pairs_in(db) == {("0002.jpg", "0005.jpg"), ("0003.jpg", "0004.jpg")}


def test_single_camera_and_camera_model(small_scene: Path, tmp_path: Path) -> None:
    db = tmp_path / "cam.db"
    args = [str(small_scene), "--out", str(db), "--single-camera", "--camera-model", "PINHOLE", *FAST]
    result = CliRunner().invoke(match_command, args)
    assert result.exit_code == 0, result.output
    with pycolmap.Database.open(db) as database:
        cameras = database.read_all_cameras()
        assert len(cameras) == 1 and cameras[0].model == pycolmap.CameraModelId.PINHOLE
        assert {im.camera_id for im in database.read_all_images()} == {cameras[0].camera_id}
        assert database.num_rigs() == 1 and database.num_frames() == 4


def test_exif_focal_length_becomes_a_flagged_prior(tmp_path: Path) -> None:
    sceaux = require_shared("scenes", "sceaux-castle", "images")
    entry = require_shared("scenes", "entry-P10", "images")
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sceaux / "100_7100.JPG", folder / "exif.JPG")  # EXIF focal length, 2832x2128
    shutil.copy(entry / "0000.jpg", folder / "noexif.jpg")  # no EXIF
    db = tmp_path / "exif.db"
    result = CliRunner().invoke(match_command, [str(folder), "--out", str(db), *FAST])
    assert result.exit_code == 0, result.output
    with pycolmap.Database.open(db) as database:
        cameras = {c.camera_id: c for c in database.read_all_cameras()}
        by_name = {im.name: cameras[im.camera_id] for im in database.read_all_images()}
    exif, plain = by_name["exif.JPG"], by_name["noexif.jpg"]
    assert (exif.width, exif.height) == (2832, 2128)
    assert exif.has_prior_focal_length and exif.focal_length == pytest.approx(2865.36, abs=0.1)
    assert not plain.has_prior_focal_length and plain.focal_length == pytest.approx(1.2 * 1600)


def test_global_mapper(small_scene: Path, tmp_path: Path) -> None:
    db, sparse = tmp_path / "g.db", tmp_path / "sparse"
    args = [str(small_scene), "--out", str(db), "--reconstruct", str(sparse), "--mapper", "global", *FAST]
    result = CliRunner().invoke(match_command, args)
    assert result.exit_code == 0, result.output
    rec = pycolmap.Reconstruction(sparse / "0")  # COLMAP's mapper layout: the largest model in 0/
    assert rec.num_reg_images() == 4 and rec.compute_mean_reprojection_error() < 1.0
