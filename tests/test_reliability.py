"""Never lose a run, never trust stale or hostile data (issue 9): one test per failure a careful user found.

Every bad input is made here, in tmp_path, from four entry-P10 photos shrunk to 400 px (RootSIFT, 512 keypoints),
so each run takes a second or two. Runs that need a file-size limit or a process without root's file-permission
override go through a subprocess.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from matcher.cli import match_command
from matcher.descriptors import SDGMNet, resolve_weights
from conftest import SMALL_SCENE_NAMES
from test_resume import _dump

FAST = ["--pipeline", "rootsift", "--max-keypoints", "512"]
NAMES = SMALL_SCENE_NAMES


@pytest.fixture(scope="module")
def reference(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The database of an uninterrupted run on ``tiny``, as :func:`_dump` reads it, and the run's file sizes."""
    db = tmp_path_factory.mktemp("reference") / "db.db"
    _run(tiny, db)
    return {"dump": _dump(db), "features": db.with_name("db.features.h5").stat().st_size,
            "matches": db.with_name("db.matches.h5").stat().st_size}


def _copy(tiny: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(tiny, folder)
    return folder


def _invoke(images: Path, db: Path, *extra: str):  # noqa: ANN202
    return CliRunner().invoke(match_command, [str(images), "--out", str(db), *FAST, *extra])


def _run(images: Path, db: Path, *extra: str) -> str:
    result = _invoke(images, db, *extra)
    assert result.exit_code == 0, result.output
    return result.output


def _one_line_error(output: str, *expected: str) -> None:
    """The output is a single error line (no traceback) mentioning every ``expected`` text."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], output


def _no_root_override() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that file permissions apply to root too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _require_permission_checks() -> None:
    """Skip unless file permissions can bind the matcher subprocess (root without the override capabilities)."""
    try:
        subprocess.run(["true"], check=True, preexec_fn=_no_root_override)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot run a process that file permissions bind here ({exc})")


def _file_size_limit(limit: int):  # noqa: ANN202
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit

    return preexec


def _subprocess(images: Path, db: Path, *extra: str, preexec=None) -> subprocess.CompletedProcess:  # noqa: ANN001
    cmd = [sys.executable, "-m", "matcher", "match", str(images), "--out", str(db), *FAST, "-v", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec, timeout=300)


# --- 1. Stale or damaged caches ------------------------------------------------------------------------------


def test_edited_image_is_extracted_and_matched_again(tiny: Path, tmp_path: Path) -> None:
    images = _copy(tiny, tmp_path)
    db = tmp_path / "run" / "db.db"
    _run(images, db)
    with Image.open(images / "0003.jpg") as img:  # edited in place, same name
        img.crop((40, 20, 400, 267)).resize((400, 267)).save(images / "0003.jpg", quality=92)
    fresh = tmp_path / "fresh" / "db.db"
    _run(images, fresh)
    output = _run(images, db, "--overwrite", "-v")
    assert "extracted 0003.jpg" in output and output.count("extracted ") == 1, output
    assert sum(line.startswith("matched ") for line in output.splitlines()) == 3  # the pairs with 0003.jpg
    assert _dump(db) == _dump(fresh)
    with Image.open(images / "0004.jpg") as img:  # replaced, then rerun after deleting the database
        img.transpose(Image.FLIP_LEFT_RIGHT).save(images / "0004.jpg", quality=92)
    db.unlink()
    fresh.unlink()
    _run(images, fresh, "--overwrite")
    _run(images, db)
    assert _dump(db) == _dump(fresh)


def _descriptor_chunk_offset(features: Path, name: str) -> int:
    with h5py.File(features, "r") as f:
        dataset = f[name]["descriptors"]
        assert dataset.fletcher32
        info = dataset.id.get_chunk_info(0)
        return int(info.byte_offset + info.size // 2)


def test_zeroed_bytes_in_features_are_recomputed_never_read_as_data(tiny: Path, reference: dict, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    features = tmp_path / "db.features.h5"
    _run(tiny, db)
    # Zeros inside one image's descriptors: a checksum error, that image is extracted again.
    offset = _descriptor_chunk_offset(features, "0004.jpg")
    with open(features, "r+b") as f:
        f.seek(offset)
        f.write(bytes(512))
    db.unlink()
    output = _run(tiny, db, "-v")
    assert "damaged features of 0004.jpg" in output and output.count("extracted ") == 1, output
    assert _dump(db) == reference["dump"]
    # A file cut in half (unopenable): recreated with a warning.
    with open(features, "r+b") as f:
        f.truncate(features.stat().st_size // 2)
    db.unlink()
    output = _run(tiny, db)
    assert "damaged features file" in output and "recomputing it" in output, output
    assert _dump(db) == reference["dump"]
    # 4 KiB of zeros in the middle of the file, wherever they land: a recompute or a clear error.
    size = features.stat().st_size
    with open(features, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(4096))
    db.unlink()
    result = _invoke(tiny, db)
    if result.exit_code == 0:
        assert _dump(db) == reference["dump"]
    else:
        _one_line_error(result.output, "features.h5")


# --- 2. One file must not lose the run ----------------------------------------------------------------------


def test_files_colmap_cannot_read_are_used_with_our_size(tiny: Path, tmp_path: Path) -> None:
    images = _copy(tiny, tmp_path)
    with Image.open(images / "0005.jpg") as img:
        img.save(images / "0005.webp", quality=95)
        img.convert("RGB").save(images / "pcx_named.jpg", format="PCX")  # PCX bytes named .jpg
    (images / "0005.jpg").unlink()
    for name in ("0005.webp", "pcx_named.jpg"):
        with pytest.raises(Exception):
            pycolmap.infer_camera_from_image(images / name, pycolmap.ImageReaderOptions())  # COLMAP's reader fails
    db = tmp_path / "db.db"
    _run(images, db)
    with pycolmap.Database.open(db) as database:
        cameras = {c.camera_id: c for c in database.read_all_cameras()}
        by_name = {im.name: cameras[im.camera_id] for im in database.read_all_images()}
    assert sorted(by_name) == ["0002.jpg", "0003.jpg", "0004.jpg", "0005.webp", "pcx_named.jpg"]
    for name in ("0005.webp", "pcx_named.jpg", "0002.jpg"):
        camera = by_name[name]
        assert (camera.width, camera.height) == (400, 267)
        assert camera.focal_length == pytest.approx(1.2 * 400) and not camera.has_prior_focal_length
    # Where COLMAP reads the file, the camera is COLMAP's own (EXIF prior included).
    expected = pycolmap.infer_camera_from_image(images / "0002.jpg", pycolmap.ImageReaderOptions())
    assert np.allclose(by_name["0002.jpg"].params, expected.params)


def test_unreadable_image_is_skipped_with_a_line(tiny: Path, tmp_path: Path) -> None:
    _require_permission_checks()
    images = _copy(tiny, tmp_path)
    os.chmod(images / "0004.jpg", 0)
    out = _subprocess(images, tmp_path / "db.db", preexec=_no_root_override)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert any(line.startswith("skipped") and "0004.jpg" in line and "Permission denied" in line
               for line in out.stderr.splitlines()), out.stderr
    assert "skipped 1 file(s):" in out.stdout and "0004.jpg" in out.stdout
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        assert database.num_images() == 3


# --- 3. A full disk (file-size limit), at each stage ------------------------------------------------------------


def _assert_clean_failure(out: subprocess.CompletedProcess, db: Path, file: str) -> None:
    assert out.returncode not in (0, -signal.SIGSEGV, -signal.SIGABRT, 139, 134), out.stderr
    _one_line_error(out.stderr, file)
    assert not db.exists()
    leftovers = [p.name for p in db.parent.iterdir() if p.name.endswith((".partial", "-wal", "-shm", ".lock"))]
    assert not leftovers


def test_full_disk_while_extracting_resumes(tiny: Path, reference: dict, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    limit = reference["features"] // 2 + 256 * 1024  # about half of the features fit beside the margin
    out = _subprocess(tiny, db, preexec=_file_size_limit(limit))
    _assert_clean_failure(out, db, "db.features.h5")
    done = sum(line.startswith("extracted") for line in out.stderr.splitlines())
    assert 0 < done < len(NAMES), out.stderr
    rerun = _subprocess(tiny, db)
    assert rerun.returncode == 0, rerun.stderr
    assert sum(line.startswith("extracted") for line in rerun.stderr.splitlines()) == len(NAMES) - done
    assert _dump(db) == reference["dump"]


def test_full_disk_while_matching_resumes(tiny: Path, reference: dict, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    _run(tiny, db)
    db.unlink()
    db.with_name("db.matches.h5").unlink()
    limit = reference["matches"] // 2 + 256 * 1024
    out = _subprocess(tiny, db, preexec=_file_size_limit(limit))
    _assert_clean_failure(out, db, "db.matches.h5")
    done = sum(line.startswith("matched") for line in out.stderr.splitlines())
    assert 0 < done < 6, out.stderr
    rerun = _subprocess(tiny, db)
    assert rerun.returncode == 0, rerun.stderr
    assert sum(line.startswith("matched") for line in rerun.stderr.splitlines()) == 6 - done
    assert not any(line.startswith("extracted") for line in rerun.stderr.splitlines())
    assert _dump(db) == reference["dump"]


def test_full_disk_while_writing_the_database_resumes(tiny: Path, reference: dict, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    _run(tiny, db)
    db.unlink()
    out = _subprocess(tiny, db, preexec=_file_size_limit(200_000))  # the database needs about 400 kB
    _assert_clean_failure(out, db, "db.db")
    rerun = _subprocess(tiny, db)
    assert rerun.returncode == 0, rerun.stderr
    assert not any(line.startswith(("extracted", "matched")) for line in rerun.stderr.splitlines())
    assert _dump(db) == reference["dump"]


# --- 4. No code runs from a checkpoint or weights file ---------------------------------------------------------


class _Payload:
    """Unpickling this runs ``touch marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoints_and_weights_run_no_code(tmp_path: Path) -> None:
    from matcher.errors import MatcherError
    from matcher.training.baselines import describe_with_baseline
    from matcher.training.trainer import TrainConfig, export_checkpoint

    marker = tmp_path / "pwned"
    config = TrainConfig(train=["x.h5"], out=str(tmp_path / "run.pt"))
    ckpt = config.checkpoint_path()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": SDGMNet().state_dict(), "step": 1, "history": [], "evil": _Payload(marker)}, ckpt)
    with pytest.raises(MatcherError, match="not a readable training checkpoint"):
        export_checkpoint(config, tmp_path / "exported.pt")
    weights = tmp_path / "tfeat.pth"
    weights.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(MatcherError, match="not a plain TFeat weights file"):
        describe_with_baseline(f"tfeat:{weights}", torch.zeros(2, 1, 32, 32))
    assert not marker.exists()


# --- 5. Options that make no sense: refused before anything is written ------------------------------------------


@pytest.mark.parametrize("option", [
    ["--max-keypoints", "0"], ["--max-keypoints", "-1"], ["--ratio", "1.5"], ["--ratio", "-0.5"], ["--ratio", "nan"],
    ["--max-edge", "-100"], ["--max-edge", "8"], ["--min-inliers", "-5"], ["--set", "verification.confidence=2"],
    ["--set", "verification.threshold=-1"], ["--camera-model", "NONSENSE"], ["--set", "pairs.strategy=random"],
    ["--set", "matching.precision=fp16"], ["--set", "detection.selection=best"], ["--set", "mapping.mapper=magic"],
])
def test_nonsense_options_are_refused_before_writing(tiny: Path, tmp_path: Path, option: list[str]) -> None:
    result = _invoke(tiny, tmp_path / "out" / "db.db", *option)
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, "must be")
    assert not (tmp_path / "out").exists()


# --- 6. No usable image is an error, not an empty database -------------------------------------------------------


def test_folder_of_bad_files_is_exit_2_and_leaves_the_database_alone(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not a picture")
    Image.new("L", (200, 200), 128).save(bad / "flat.png")
    result = _invoke(bad, tmp_path / "new" / "db.db")
    assert result.exit_code == 2 and "no usable image" in result.output, result.output
    assert not (tmp_path / "new").exists()
    good = tmp_path / "good" / "db.db"
    _run(tiny, good)
    before = {p.name: p.read_bytes() for p in good.parent.iterdir()}
    result = _invoke(bad, good, "--overwrite")
    assert result.exit_code == 2 and "no usable image" in result.output, result.output
    assert {p.name: p.read_bytes() for p in good.parent.iterdir()} == before


# --- 7. Nothing ignored silently, no traceback --------------------------------------------------------------------


def test_links_hidden_files_and_unreadable_folders_are_named(tiny: Path, tmp_path: Path) -> None:
    _require_permission_checks()
    images = _copy(tiny, tmp_path)
    (images / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tiny / "0002.jpg", outside / "elsewhere.jpg")
    (images / "linked").symlink_to(outside, target_is_directory=True)
    shutil.copy(tiny / "0002.jpg", images / ".hidden.jpg")
    os.mkfifo(images / "pipe.jpg")  # reading it would block forever
    (images / "locked").mkdir()
    shutil.copy(tiny / "0003.jpg", images / "locked" / "inside.jpg")
    os.chmod(images / "locked", 0)
    try:
        out = _subprocess(images, tmp_path / "db.db", preexec=_no_root_override)
    finally:
        os.chmod(images / "locked", 0o755)
    assert out.returncode == 0, out.stderr
    summary = out.stdout[out.stdout.index("skipped 5 file(s):"):]
    for name, reason in [("gone.jpg", "broken symbolic link"), ("linked/", "symbolic link to a folder"),
                         (".hidden.jpg", "hidden file"), ("locked/", "cannot list folder (Permission denied)"),
                         ("pipe.jpg", "not a regular file")]:
        assert f"{name}: {reason}" in summary, summary
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        assert database.num_images() == 4


def test_bad_pairs_file_and_reconstruct_path_are_one_line_errors(tiny: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(b"0002.jpg 0003.jpg\n\xff\xfe\x00bad\n")
    result = _invoke(tiny, tmp_path / "out" / "db.db", "--pairs", str(pairs))
    assert result.exit_code == 2
    _one_line_error(result.output, str(pairs), "UTF-8")
    (tmp_path / "a_file").write_text("x")
    result = _invoke(tiny, tmp_path / "out" / "db.db", "--reconstruct", str(tmp_path / "a_file"))
    assert result.exit_code == 2
    _one_line_error(result.output, "a_file", "--reconstruct")
    assert not (tmp_path / "out").exists()


def test_read_only_output_folder_is_a_one_line_error(tiny: Path, tmp_path: Path) -> None:
    _require_permission_checks()
    out_dir = tmp_path / "readonly"
    out_dir.mkdir()
    os.chmod(out_dir, 0o555)
    try:
        out = _subprocess(tiny, out_dir / "db.db", preexec=_no_root_override)
    finally:
        os.chmod(out_dir, 0o755)
    assert out.returncode != 0
    _one_line_error(out.stderr, str(out_dir), "Permission denied")
    assert list(out_dir.iterdir()) == []


def _weights(path: Path, state_dict, meta) -> Path:  # noqa: ANN001
    torch.save({"format": "matcher.sdgmnet/1", "state_dict": state_dict, "meta": meta}, path)
    return path


def test_bad_model_files_are_refused_before_writing_and_do_not_block_the_fix(tiny: Path, tmp_path: Path) -> None:
    good = SDGMNet().state_dict()
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in good.items()}
    cases = {
        "list_state.pt": (["not", "a", "dict"], {}, "'state_dict' is not a dict of tensors"),
        "list_meta.pt": (good, ["meta"], "'meta' is not a dict"),
        "nan.pt": (nan, {}, "NaN or infinite"),
    }
    db = tmp_path / "out" / "db.db"
    common = ["--max-keypoints", "256", "--max-edge", "400"]
    for name, (state, meta, message) in cases.items():
        model = _weights(tmp_path / name, state, meta)
        result = CliRunner().invoke(match_command, [str(tiny), "--out", str(db), "--model", str(model), *common])
        assert result.exit_code == 2, result.output
        _one_line_error(result.output, name, message)
        assert not (tmp_path / "out").exists()
    fixed = tmp_path / "fixed.pt"
    shutil.copy(resolve_weights("sdgmnet"), fixed)
    result = CliRunner().invoke(match_command, [str(tiny), "--out", str(db), "--model", str(fixed), *common])
    assert result.exit_code == 0, result.output


# --- 8. Two runs on one output ------------------------------------------------------------------------------------


def test_second_run_on_the_same_output_is_refused_and_a_dead_lock_does_not_block(tiny: Path, tmp_path: Path) -> None:
    from matcher.output_lock import OutputLock

    db = tmp_path / "db.db"
    with OutputLock(db):  # as a running match holds it
        result = _invoke(tiny, db)
        assert result.exit_code == 2, result.output
        _one_line_error(result.output, f"another match is writing {db} (pid {os.getpid()})")
    assert not db.exists()
    # A lock file left by a killed run (its pid, no lock held any more) does not block.
    db.with_name("db.db.lock").write_text("999999\n")
    _run(tiny, db)
    assert not db.with_name("db.db.lock").exists()


def test_a_pair_without_matches_is_stored_checked_and_reused(tmp_path: Path) -> None:
    """Empty arrays have no chunks to checksum: they are stored plainly and still read back and reused."""
    from matcher.storage import MatchStore, PairMatches

    empty = PairMatches(np.zeros((0, 2), np.int32), np.zeros(0, np.float32), np.zeros(0, bool), None, None, "none")
    with MatchStore(tmp_path / "m.h5") as store:
        store.write("a.jpg", "b.jpg", empty, ("1", "2"))
    with MatchStore(tmp_path / "m.h5") as store:
        assert store.usable("a.jpg", "b.jpg", ("1", "2"))
        back = store.read("a.jpg", "b.jpg")
    assert back.matches.shape == (0, 2) and back.model == "none" and back.num_inliers == 0
