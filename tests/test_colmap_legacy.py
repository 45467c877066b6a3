"""Databases for COLMAP 3.x (before 3.12): the legacy schema, its content, ``convert-db``, and Debian's real
``colmap`` binary reading what we write.

Without a binary: the schema is checked against COLMAP 3.8's table definitions (tests/fixtures) and the content
is read back with sqlite3 against the modern database of the same run. Where ``colmap`` is on PATH
(``apt-get install colmap``: 3.8 on Debian bookworm), its ``mapper`` and ``exhaustive_matcher`` run on a
database written for its version (scene tests: they run where CI=true).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from click.testing import CliRunner

from conftest import require_shared
from matcher.cli import main
from matcher.colmap_db import read_pairs
from matcher.colmap_legacy_db import MAX_NUM_IMAGES, LegacyDatabase, parse_colmap_version, schema_name
from matcher.config import load_config
from matcher.errors import ConfigError
from matcher.pipeline import OutputPaths, run_match
from matcher.storage import FeatureStore, MatchStore

FIXTURE = Path(__file__).parent / "fixtures" / "colmap_3.8_schema.sql"
FAST = [{"images": {"max_edge": 640}}, {"detection": {"max_keypoints": 512}}]
TABLES = ("cameras", "images", "keypoints", "descriptors", "matches", "two_view_geometries")


def _normalised_schema(connection: sqlite3.Connection) -> dict[str, str]:
    """name -> CREATE statement with whitespace normalised (COLMAP's strings are split over source lines)."""
    rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'sqlite_sequence'")
    out = {}
    for name, sql in rows:
        sql = re.sub(r"\s+", " ", sql)
        out[name] = re.sub(r"\s*([(),])\s*", r"\1", sql).strip()
    return out


def _rows(db_path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db_path) as c:
        return c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


@pytest.fixture(scope="module")
def run(small_scene: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run written twice from the same features and matches: the modern database and the 3.8 one."""
    out = tmp_path_factory.mktemp("legacy")
    modern, legacy = out / "modern.db", out / "legacy.db"
    config = load_config("rootsift", FAST)
    run_match(small_scene, modern, config, progress=False)
    for suffix in (".features.h5", ".matches.h5"):  # the legacy run reuses the modern run's caches
        shutil.copy(out / f"modern{suffix}", out / f"legacy{suffix}")
    legacy_config = load_config("rootsift", FAST + [{"export": {"colmap_version": "3.8"}}])
    report = run_match(small_scene, legacy, legacy_config, progress=False)
    assert report.images_reused == 4 and report.pairs_reused == 6
    return small_scene, modern, legacy, report


def test_schema_is_colmap_3_8s(run) -> None:
    _, _, legacy, _ = run
    reference = sqlite3.connect(":memory:")
    reference.executescript(FIXTURE.read_text())
    with sqlite3.connect(legacy) as ours:
        assert _normalised_schema(ours) == _normalised_schema(reference)
        assert ours.execute("PRAGMA user_version").fetchone() == (3800,)
        for table in TABLES:
            info = ours.execute(f"PRAGMA table_info({table})").fetchall()
            assert info == reference.execute(f"PRAGMA table_info({table})").fetchall(), table
        assert ours.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert ours.execute("PRAGMA foreign_key_check").fetchall() == []


def test_content_read_back_with_sqlite_equals_the_modern_database(run) -> None:
    _, modern, legacy, _ = run
    paths = OutputPaths(legacy)
    with pycolmap.Database.open(modern) as db, sqlite3.connect(legacy) as c:
        cameras = {cam.camera_id: cam for cam in db.read_all_cameras()}
        rows = c.execute("SELECT camera_id, model, width, height, params, prior_focal_length FROM cameras").fetchall()
        assert len(rows) == len(cameras) == 4
        for camera_id, model, width, height, params, prior in rows:
            cam = cameras[camera_id]
            assert (model, width, height, bool(prior)) == (int(cam.model), cam.width, cam.height,
                                                          cam.has_prior_focal_length)
            np.testing.assert_array_equal(np.frombuffer(params, np.float64), cam.params)
        images = {im.name: im for im in db.read_all_images()}
        rows = c.execute("SELECT image_id, name, camera_id, prior_qw, prior_tz FROM images").fetchall()
        assert {(r[0], r[1], r[2]) for r in rows} == {(im.image_id, n, im.camera_id) for n, im in images.items()}
        assert all(r[3] is None and r[4] is None for r in rows)  # no pose priors

        with FeatureStore(paths.features, "r") as features:
            for image_id, name, *_ in rows:
                n, cols, blob = c.execute("SELECT rows, cols, data FROM keypoints WHERE image_id=?", (image_id,)).fetchone()
                keypoints = np.frombuffer(blob, np.float32).reshape(n, cols)
                f = features.read(name)
                assert cols == 4 and n == len(f)
                np.testing.assert_array_equal(keypoints[:, :2], f.keypoints + np.float32(0.5))  # COLMAP's +0.5
                np.testing.assert_array_equal(keypoints, db.read_keypoints(image_id))
                n, cols, blob = c.execute("SELECT rows, cols, data FROM descriptors WHERE image_id=?", (image_id,)).fetchone()
                assert cols == 128
                np.testing.assert_array_equal(
                    np.frombuffer(blob, np.uint8).reshape(n, cols), db.read_descriptors(image_id).data
                )

        pair_ids, matches = db.read_all_matches()
        rows = c.execute("SELECT pair_id, rows, cols, data FROM matches").fetchall()
        assert sorted(r[0] for r in rows) == sorted(pair_ids) and len(rows) == 6
        for pair_id, n, cols, blob in rows:
            id1, id2 = divmod(pair_id, MAX_NUM_IMAGES)
            assert 0 < id1 < id2  # COLMAP's pair id convention
            np.testing.assert_array_equal(np.frombuffer(blob, np.uint32).reshape(n, cols), db.read_matches(id1, id2))

        rows = c.execute("SELECT pair_id, rows, cols, data, config, F, E, H, qvec, tvec FROM two_view_geometries").fetchall()
        assert len(rows) == db.num_verified_image_pairs() > 0
        for pair_id, n, cols, blob, config, F, E, H, qvec, tvec in rows:
            id1, id2 = divmod(pair_id, MAX_NUM_IMAGES)
            tvg = db.read_two_view_geometry(id1, id2)
            assert config == int(tvg.config)
            np.testing.assert_array_equal(np.frombuffer(blob, np.uint32).reshape(n, cols), tvg.inlier_matches)
            np.testing.assert_array_equal(np.frombuffer(F, np.float64).reshape(3, 3), tvg.F)  # row-major
            if tvg.H is not None:
                np.testing.assert_array_equal(np.frombuffer(H, np.float64).reshape(3, 3), tvg.H)
            assert not np.frombuffer(E, np.float64).any()  # no calibrated pose, as COLMAP 3.8 writes it
            np.testing.assert_array_equal(np.frombuffer(qvec, np.float64), [1, 0, 0, 0])
            np.testing.assert_array_equal(np.frombuffer(tvec, np.float64), [0, 0, 0])


def test_summary_names_the_schema(run) -> None:
    _, _, legacy, report = run
    assert report.database_schema == "COLMAP 3.8 schema"
    assert report.format(OutputPaths(legacy)).splitlines()[2].endswith(", COLMAP 3.8 schema")
    assert schema_name("3.10.1") == "COLMAP 3.8 schema (for COLMAP 3.10)"
    assert schema_name("").startswith("COLMAP >= 3.12 schema")


def test_pycolmap_4_opens_a_copy_and_reads_the_same_pairs(run, tmp_path: Path) -> None:
    """pycolmap 4 opens a 3.8-layout database (adding its new tables, empty: its mapper makes trivial rigs and
    frames itself) and reads the same content."""
    images, modern, legacy, _ = run
    copy = tmp_path / "copy.db"
    shutil.copy(legacy, copy)
    names = sorted(p.name for p in images.iterdir())
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for ours, theirs in zip(read_pairs(copy, pairs), read_pairs(modern, pairs)):
        np.testing.assert_array_equal(ours.keypoints1, theirs.keypoints1)
        np.testing.assert_array_equal(ours.matches, theirs.matches)
        np.testing.assert_array_equal(ours.inliers, theirs.inliers)
        assert ours.config == theirs.config
    with pycolmap.Database.open(copy) as db:
        assert db.num_images() == 4 and db.num_frames() == 0


def test_convert_db_both_ways(run, tmp_path: Path) -> None:
    _, modern, legacy, _ = run
    digest = hashlib.sha256(modern.read_bytes()).hexdigest()
    converted = tmp_path / "converted.db"
    result = CliRunner().invoke(main, ["convert-db", str(modern), str(converted), "--colmap-version", "3.8"])
    assert result.exit_code == 0, result.output
    assert "COLMAP 3.8 schema" in result.output
    assert hashlib.sha256(modern.read_bytes()).hexdigest() == digest  # the input is left as it was
    for table in TABLES:  # byte for byte what the pipeline writes for 3.8
        assert _rows(converted, table) == _rows(legacy, table), table

    upgraded = tmp_path / "upgraded.db"
    digest = hashlib.sha256(legacy.read_bytes()).hexdigest()
    result = CliRunner().invoke(main, ["convert-db", str(legacy), str(upgraded), "--colmap-version", "3.12"])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(legacy.read_bytes()).hexdigest() == digest
    with pycolmap.Database.open(upgraded) as db:
        assert db.num_rigs() == db.num_cameras() == 4 and db.num_frames() == 4
        assert db.num_verified_image_pairs() == len(_rows(legacy, "two_view_geometries"))

    again = CliRunner().invoke(main, ["convert-db", str(modern), str(converted), "--colmap-version", "3.8"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_swapped_pair_is_stored_in_id_order(tmp_path: Path) -> None:
    """A pair given as (2, 1) is stored as COLMAP 3.8 stores it: pair (1, 2), matches swapped, F transposed,
    H inverted."""
    F = np.arange(9, dtype=np.float64).reshape(3, 3)
    H = np.array([[1.0, 0.1, 5.0], [0.0, 1.2, -3.0], [0.001, 0.0, 1.0]])
    matches = np.array([[0, 5], [1, 7], [4, 2]], np.uint32)
    with LegacyDatabase(tmp_path / "swap.db") as db:
        db.write_matches(2, 1, matches)
        db.write_two_view_geometry(2, 1, 6, matches, F=F, H=H)
    (pair_id, n, cols, data), = _rows(tmp_path / "swap.db", "matches")
    assert pair_id == 1 * MAX_NUM_IMAGES + 2
    np.testing.assert_array_equal(np.frombuffer(data, np.uint32).reshape(n, cols), matches[:, ::-1])
    row, = _rows(tmp_path / "swap.db", "two_view_geometries")
    np.testing.assert_array_equal(np.frombuffer(row[5], np.float64).reshape(3, 3), F.T)
    np.testing.assert_allclose(np.frombuffer(row[7], np.float64).reshape(3, 3), np.linalg.inv(H))


@pytest.mark.parametrize("text", ["banana", "3", "2.4", "3.8.x"])
def test_bad_version_is_one_line_and_writes_nothing(text: str, small_scene: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colmap_version"):
        parse_colmap_version(text)
    result = CliRunner().invoke(main, ["match", str(small_scene), "--out", str(tmp_path / "db.db"),
                                       "--colmap-version", text, "-q"])
    assert result.exit_code == 2 and "colmap_version" in result.output
    assert list(tmp_path.iterdir()) == []


# --- Debian's real COLMAP ------------------------------------------------------------------------------------

COLMAP = shutil.which("colmap")
needs_colmap = pytest.mark.skipif(COLMAP is None, reason="no `colmap` binary on PATH (apt-get install colmap)")


def _colmap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")  # the binary links Qt; headless without a display
    return subprocess.run([COLMAP, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _binary_version() -> str:
    """``COLMAP 3.8 -- Structure-from-Motion ...`` -> ``3.8``."""
    match = re.search(r"COLMAP (\d+\.\d+(?:\.\d+)?)", _colmap("-h").stdout)
    assert match, "cannot read the colmap binary's version"
    return match.group(1)


@needs_colmap
def test_binary_database_creator_writes_the_fixture_schema(tmp_path: Path) -> None:
    version = _binary_version()
    if parse_colmap_version(version) != (3, 8):
        pytest.skip(f"the fixture is COLMAP 3.8's schema; this binary is {version}")
    assert _colmap("database_creator", "--database_path", str(tmp_path / "empty.db")).returncode == 0
    reference = sqlite3.connect(":memory:")
    reference.executescript(FIXTURE.read_text())
    with sqlite3.connect(tmp_path / "empty.db") as c:
        assert _normalised_schema(c) == _normalised_schema(reference)


@pytest.fixture(scope="module")
def castle_for_binary(tmp_path_factory: pytest.TempPathFactory):
    """sceaux-castle (11 images) matched at 1024 px with 2048 keypoints, written for the binary's version."""
    if COLMAP is None:
        pytest.skip("no `colmap` binary on PATH (apt-get install colmap)")
    images = require_shared("scenes", "sceaux-castle", "images")
    version = _binary_version()
    out = tmp_path_factory.mktemp("castle38") / "db.db"
    config = load_config("rootsift", [{"images": {"max_edge": 1024}}, {"detection": {"max_keypoints": 2048}},
                                      {"export": {"colmap_version": version}}])
    report = run_match(images, out, config, progress=False)
    assert report.database["images"] == 11
    return images, out, version


@pytest.mark.scene
@pytest.mark.parametrize("opened_by_pycolmap", [False, True], ids=["as-written", "after-pycolmap"])
def test_binary_mapper_registers_every_image(castle_for_binary, tmp_path: Path, opened_by_pycolmap: bool) -> None:
    """Also after pycolmap 4 opened the database (``match --colmap-version 3.8 --reconstruct`` maps it with
    pycolmap, which adds its tables and leaves COLMAP 3.8's alone)."""
    images, db_path, version = castle_for_binary
    database = tmp_path / "db.db"
    shutil.copy(db_path, database)
    if opened_by_pycolmap:
        with pycolmap.Database.open(database) as db:
            assert db.num_images() == 11
        with sqlite3.connect(database) as c:
            assert c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'frames'").fetchone() == (1,)
    (tmp_path / "sparse").mkdir()
    result = _colmap("mapper", "--database_path", str(database), "--image_path", str(images),
                     "--output_path", str(tmp_path / "sparse"), "--Mapper.num_threads", "2")
    assert result.returncode == 0, f"colmap {version} mapper failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    models = sorted((tmp_path / "sparse").iterdir())
    assert [m.name for m in models] == ["0"], "one model"
    reconstruction = pycolmap.Reconstruction(models[0])
    assert reconstruction.num_reg_images() == 11
    assert reconstruction.num_points3D() > 1000


@pytest.mark.scene
def test_binary_exhaustive_matcher_matches_our_descriptors(castle_for_binary, tmp_path: Path) -> None:
    """COLMAP's own SIFT matcher and verification on our keypoints and uint8 descriptors."""
    _, db_path, version = castle_for_binary
    database = tmp_path / "db.db"
    shutil.copy(db_path, database)
    with sqlite3.connect(database) as c:  # keep the features, let COLMAP match them
        c.execute("DELETE FROM matches")
        c.execute("DELETE FROM two_view_geometries")
    result = _colmap("exhaustive_matcher", "--database_path", str(database), "--SiftMatching.use_gpu", "0",
                     "--SiftMatching.num_threads", "2")
    assert result.returncode == 0, f"colmap {version} exhaustive_matcher failed:\n{result.stderr[-2000:]}"
    with sqlite3.connect(database) as c:
        matched = c.execute("SELECT COUNT(*) FROM matches WHERE rows > 0").fetchone()[0]
        verified = c.execute("SELECT COUNT(*) FROM two_view_geometries WHERE rows >= 15").fetchone()[0]
    assert matched == 55 and verified >= 45, (matched, verified)


def test_full_disk_while_writing_is_one_line_and_leaves_nothing(run, tmp_path: Path) -> None:
    """The 3.8 writer fails as ``write_database`` does: one line, no partial file, the caches reused next time."""
    import resource
    import signal
    import sys

    images, _, legacy, _ = run
    db = tmp_path / "legacy.db"
    for suffix in (".features.h5", ".matches.h5"):
        shutil.copy(legacy.with_name(f"legacy{suffix}"), tmp_path / f"legacy{suffix}")
    limit = legacy.stat().st_size // 2

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    cmd = [sys.executable, "-m", "matcher", "match", str(images), "--out", str(db), "--pipeline", "rootsift",
           "--max-edge", "640", "--max-keypoints", "512", "--colmap-version", "3.8", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=file_size_limit, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write the database" in errors[0], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("legacy.db")) == []
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    for table in TABLES:
        assert _rows(db, table) == _rows(legacy, table), table
