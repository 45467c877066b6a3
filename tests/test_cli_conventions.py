"""CLI conventions for scripts and logs: progress bars only on a terminal, --version, exit codes, --json,
thread counts, -q on every subcommand. Real photos through the real commands."""

from __future__ import annotations

import json
import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import click
import pycolmap
import pytest
from click.testing import CliRunner

import matcher
from conftest import require_shared
from matcher.cli import main, match_command

FAST = ["--descriptor", "rootsift", "--max-edge", "640", "--max-keypoints", "1024"]


@pytest.fixture(scope="module")
def two_photos(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two_photos")
    for name in ("0002.jpg", "0003.jpg"):
        shutil.copy(small_scene / name, folder / name)
    return folder


def _stderr_of(args: list[str], terminal: bool, log: Path) -> str:
    """Run ``python -m matcher ARGS`` with stderr on a pseudo-terminal or in the file ``log``."""
    command = [sys.executable, "-m", "matcher", *args]
    env = dict(os.environ)
    if not terminal:
        with open(log, "wb") as file:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=file, env=env, check=True, timeout=300)
        return log.read_text()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_on_a_terminal(two_photos: Path, tmp_path: Path) -> None:
    args = ["match", str(two_photos), "--out", str(tmp_path / "log.db"), *FAST]
    logged = _stderr_of(args, terminal=False, log=tmp_path / "run.log")
    assert "\r" not in logged
    # The same run on a terminal draws its bars (so the check above can fail): features are recomputed.
    drawn = _stderr_of(args + ["--overwrite", "--set", "detection.max_keypoints=1000"], terminal=True, log=tmp_path)
    assert "\r" in drawn and "extract" in drawn


def test_version() -> None:
    for command, args in ((match_command, ["--version"]), (main, ["--version"])):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0
        assert result.output.strip().endswith(f"version {matcher.__version__}")


@pytest.fixture(scope="module")
def run_json(two_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("json")
    result = CliRunner().invoke(match_command, [str(two_photos), "--out", str(out / "db.db"), "--json",
                                                str(out / "run.json"), "--threads", "1", *FAST])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "run.json").read_text())


def test_json_summary_describes_the_run(run_json: tuple[Path, dict]) -> None:
    out, summary = run_json
    assert summary["command"] == "match" and summary["exit_code"] == 0
    assert summary["version"] == matcher.__version__
    assert summary["images_used"] == ["0002.jpg", "0003.jpg"] and summary["skipped"] == []
    assert summary["outputs"]["database"] == str(out / "db.db")
    with pycolmap.Database.open(out / "db.db") as database:
        assert summary["database"]["images"] == database.num_images() == 2
        assert summary["database"]["keypoints"] == database.num_keypoints()
        assert summary["database"]["verified_pairs"] == database.num_verified_image_pairs() == 1
    assert set(summary["timings"]) >= {"extract", "match", "export"}
    assert summary["reconstruction"] is None


def test_threads_option_sets_torch_opencv_and_worker_counts(run_json: tuple[Path, dict]) -> None:
    _, summary = run_json
    assert summary["threads"] == {"budget": 1, "torch": 1, "opencv": 1, "matching_workers": 1}


def test_default_threads_follow_cpu_affinity_and_omp_num_threads() -> None:
    probe = [sys.executable, "-c", "from matcher.threads import thread_budget; print(thread_budget())"]

    def budget(env: dict[str, str], cpus: set[int] | None = None) -> int:
        environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        done = subprocess.run(probe, env=environment, preexec_fn=preexec, capture_output=True, text=True, check=True)
        return int(done.stdout)

    mine = len(os.sched_getaffinity(0))
    assert budget({}) == mine
    assert budget({"OMP_NUM_THREADS": "1"}) == 1
    assert budget({}, cpus={sorted(os.sched_getaffinity(0))[0]}) == 1  # as `taskset -c N` or a container gives
    if mine > 1:
        assert budget({"OMP_NUM_THREADS": str(mine + 8)}) == mine  # never more threads than CPUs


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three photos of three different scenes: nothing to reconstruct."""
    folder = tmp_path_factory.mktemp("unrelated")
    shutil.copy(require_shared("scenes", "entry-P10", "images", "0002.jpg"), folder / "a.jpg")
    shutil.copy(require_shared("scenes", "castle-P19", "images", "0000.jpg"), folder / "b.jpg")
    shutil.copy(require_shared("homography", "v_churchill", "1.ppm"), folder / "c.ppm")
    return folder


def test_exit_code_1_with_the_reason_when_nothing_registers(unrelated: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.db"
    result = CliRunner().invoke(match_command, [str(unrelated), "--out", str(db), "--reconstruct",
                                                str(tmp_path / "sparse"), "--json", str(tmp_path / "run.json"),
                                                "-q", *FAST])
    assert result.exit_code == 1
    with pycolmap.Database.open(db) as database:  # the database is kept; the reason fits what it holds
        _, inliers = database.read_two_view_geometry_num_inliers()
    if any(n >= 15 for n in inliers):
        why = "the incremental mapper found no initial pair"
    else:
        why = "no image pair has a verified geometry with at least 15 inlier matches"
    assert result.output.startswith("error: the reconstruction registered no image: ") and why in result.output
    assert len(result.output.strip().splitlines()) == 1
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["exit_code"] == 1 and summary["reconstruction"]["registered_images"] == 0
    assert why in summary["reconstruction"]["failure"]
    again = CliRunner().invoke(main, ["reconstruct", str(db), str(unrelated), str(tmp_path / "again"), "-q"])
    assert again.exit_code == 1 and why in again.output


def test_exit_codes_0_and_2(two_photos: Path, run_json: tuple[Path, dict]) -> None:
    out, _ = run_json
    refused = CliRunner().invoke(match_command, [str(two_photos), "--out", str(out / "db.db"), *FAST])
    assert refused.exit_code == 2 and "database exists" in refused.output  # a user error: nothing replaced
    for threads in ("x", "0"):
        bad = CliRunner().invoke(match_command, [str(two_photos), "--out", str(out / "x.db"), "--threads", threads])
        assert bad.exit_code == 2 and not (out / "x.db").exists()


def test_quiet_on_every_subcommand(two_photos: Path, tmp_path: Path) -> None:
    def commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        context = click.Context(group)  # list_commands/get_command: the group imports subcommands lazily
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            if isinstance(command, click.Group):
                found |= commands(command, f"{prefix}{name} ")
            else:
                found[prefix + name] = command
        return found

    every = commands(main)
    assert {"match", "reconstruct", "demo", "eval", "show", "train", "finetune", "dataset scene"} <= set(every)
    lacking = [name for name, command in every.items() if not any("-q" in p.opts for p in command.params)]
    assert lacking == []
    result = CliRunner().invoke(match_command, [str(two_photos), "--out", str(tmp_path / "q.db"), "-q", *FAST])
    assert result.exit_code == 0 and result.output == ""
