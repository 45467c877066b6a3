"""--ray: extraction and matching as tasks on a local Ray cluster with two worker processes give the database of a
local run, also when a worker process dies mid-run; without Ray, a one-line error naming the extra.
Four real photos at 400x267, RootSIFT, 512 keypoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from matcher.cli import match_command
from matcher.config import load_config
from matcher.distributed import FAULT_ENV
from matcher.pipeline import run_match
from conftest import SMALL_SCENE_NAMES
from test_resume import _dump

NAMES = SMALL_SCENE_NAMES
STAGES = ("extract", "match")


@pytest.fixture(scope="module")
def config():  # noqa: ANN201
    return load_config("rootsift", [{"detection": {"max_keypoints": 512}}])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A local Ray cluster of two CPUs (two worker processes). Its workers see FAULT_ENV = a folder holding one
    marker per stage: while a stage's marker is there, nothing happens; removed, the stage's next task writes
    it (with its worker's pid) and kills its own worker process."""
    ray = pytest.importorskip("ray")
    faults = tmp_path_factory.mktemp("faults")
    for stage in STAGES:
        (faults / stage).touch()
    previous = os.environ.get(FAULT_ENV)
    os.environ[FAULT_ENV] = str(faults)  # inherited by the raylet and its workers
    if ray.is_initialized():  # another test's Ray: this one needs its own workers, started with FAULT_ENV
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield faults
    ray.shutdown()
    if previous is None:
        os.environ.pop(FAULT_ENV, None)
    else:
        os.environ[FAULT_ENV] = previous


@pytest.fixture(scope="module")
def reference(tiny: Path, config, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    db = tmp_path_factory.mktemp("local") / "db.db"
    run_match(tiny, db, config, progress=False)
    return _dump(db)


def test_ray_run_writes_the_local_database(tiny: Path, config, cluster: Path, reference: dict,  # noqa: ANN001
                                           tmp_path: Path) -> None:
    report = run_match(tiny, tmp_path / "db.db", config, progress=False, ray="auto")
    assert report.images_used == list(NAMES) and report.pairs == 6 and report.pairs_reused == 0
    assert _dump(tmp_path / "db.db") == reference
    again = run_match(tiny, tmp_path / "db.db", config, progress=False, ray="auto", overwrite=True)
    assert again.images_reused == 4 and again.pairs_reused == 6  # the Ray run's files resume like a local run's


def test_ray_run_with_verified_neighbour_pairs_writes_the_local_database(tiny: Path, cluster: Path,
                                                                        tmp_path: Path) -> None:
    """``--retrieval 2``: 5 retrieved pairs, then 1 verified-neighbour pair proposed from their results; with Ray
    the same pairs, the same database, and a rerun reuses all of them."""
    config = load_config("rootsift", [{"detection": {"max_keypoints": 512}},
                                      {"pairs": {"strategy": "retrieval", "retrieval_k": 2}}])
    local = run_match(tiny, tmp_path / "local.db", config, progress=False)
    on_ray = run_match(tiny, tmp_path / "ray.db", config, progress=False, ray="auto")
    assert local.pairs_added == on_ray.pairs_added == [1] and local.pairs == on_ray.pairs == 6
    assert _dump(tmp_path / "ray.db") == _dump(tmp_path / "local.db")
    again = run_match(tiny, tmp_path / "ray.db", config, progress=False, ray="auto", overwrite=True)
    assert again.pairs_reused == 6 and again.pairs_added == [1]


def test_killed_workers_tasks_are_retried_and_the_database_is_the_same(
    tiny: Path, config, cluster: Path, reference: dict, tmp_path: Path  # noqa: ANN001
) -> None:
    for stage in STAGES:
        (cluster / stage).unlink()
    report = run_match(tiny, tmp_path / "db.db", config, progress=False, ray="auto")
    for stage in STAGES:  # each stage's first task wrote its marker with its pid, then killed that worker
        pid = int((cluster / stage).read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert report.images_used == list(NAMES) and report.pairs == 6
    assert _dump(tmp_path / "db.db") == reference


def test_without_ray_a_one_line_error_names_the_extra(tiny: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    db = tmp_path / "out" / "db.db"
    result = CliRunner().invoke(match_command, [str(tiny), "--out", str(db), "--pipeline", "rootsift", "--ray", "auto"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ['error: Ray is not installed; --ray needs the extra: pip install "matcher[ray]"'], result.output
    assert not (tmp_path / "out").exists()  # nothing written
