"""A killed run resumes where it stopped and gives the same database as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap

ARGS = ["--max-edge", "640", "--max-keypoints", "1024", "-v"]


def _match(images: Path, db: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "matcher", "match", str(images), "--out", str(db), *ARGS, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return out.stderr.splitlines()


def _run_until(images: Path, db: Path, marker: str, count: int, *extra: str) -> None:
    """Start a run and SIGKILL it once ``count`` log lines starting with ``marker`` have appeared."""
    cmd = [sys.executable, "-m", "matcher", "match", str(images), "--out", str(db), *ARGS, *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.lstrip("\r").startswith(marker):
            seen += 1
            if seen >= count:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert seen >= count, f"the run ended before {count} '{marker}' lines"


def _dump(db_path: Path) -> dict:
    """Everything a reconstruction reads, keyed by image names."""
    with pycolmap.Database.open(db_path) as db:
        images = {im.image_id: im.name for im in db.read_all_images()}
        cameras = {c.camera_id: (c.model, c.width, c.height, tuple(np.round(c.params, 6))) for c in db.read_all_cameras()}
        dump: dict = {"cameras": sorted(cameras.values())}
        for image_id, name in images.items():
            dump[("kp", name)] = db.read_keypoints(image_id).tobytes()
            dump[("desc", name)] = db.read_descriptors(image_id).data.tobytes()
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, tvg in zip(pair_ids, geometries):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            dump[("matches", images[a], images[b])] = db.read_matches(a, b).tobytes()
            dump[("inliers", images[a], images[b])] = tvg.inlier_matches.tobytes()
            dump[("config", images[a], images[b])] = int(tvg.config)
        dump["num_pairs"] = db.num_matched_image_pairs()
    return dump


def test_killed_runs_resume_to_the_same_database(small_scene: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref" / "db.db"
    _match(small_scene, reference)

    resumed = tmp_path / "resumed" / "db.db"
    _run_until(small_scene, resumed, "extracted", 2)  # killed during extraction
    assert not resumed.exists()
    log = _match(small_scene, resumed)
    extracted = [line for line in log if line.lstrip("\r").startswith("extracted")]
    assert len(extracted) == 2, log  # the two finished images were not redone
    assert _dump(resumed) == _dump(reference)


def test_killed_during_matching_resumes_without_redoing_pairs(small_scene: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref" / "db.db"
    _match(small_scene, reference)
    resumed = tmp_path / "resumed" / "db.db"
    # One worker while killing: with several, the pairs after the third are often already computed and written
    # before the signal lands. The resumed run uses the default workers (the cache does not depend on them).
    _run_until(small_scene, resumed, "matched", 3, "--set", "matching.workers=1")
    log = _match(small_scene, resumed)
    assert not any(line.lstrip("\r").startswith("extracted") for line in log)
    assert len([line for line in log if line.lstrip("\r").startswith("matched")]) == 3  # 6 pairs, 3 done before
    assert _dump(resumed) == _dump(reference)


def test_same_inputs_give_the_same_database(small_scene: Path, tmp_path: Path) -> None:
    """Also with one or three matching workers (pairs run concurrently, results are written in pair order)."""
    a, b, c = tmp_path / "a" / "db.db", tmp_path / "b" / "db.db", tmp_path / "c" / "db.db"
    _match(small_scene, a)
    _match(small_scene, b, "--set", "matching.workers=1")
    _match(small_scene, c, "--set", "matching.workers=3")
    assert _dump(a) == _dump(b) == _dump(c)


def test_rerun_with_other_settings_refuses_stale_caches(small_scene: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    _match(small_scene, db)
    db.unlink()
    cmd = [sys.executable, "-m", "matcher", "match", str(small_scene), "--out", str(db), "--max-edge", "800", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert "other settings" in out.stderr and "db.features.h5" in out.stderr
