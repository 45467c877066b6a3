"""A chain of distillation stages as one command (matcher.training.recipe): the shipped weights' reproduction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matcher.descriptors import load_sdgmnet
from matcher.errors import ConfigError
from matcher.training.datasets import build_homography_dataset
from matcher.training.recipe import load_recipe, run_recipe, stage_configs

from conftest import require_shared

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_recipe_chains_its_stages_into_the_shipped_weights(tmp_path: Path) -> None:
    """models/sdgmnet-half.recipe.toml: every stage starts from the previous stage's kept weights, runs the steps
    the shipped run ran, and the last one's weights are installed as models/sdgmnet-half.pt."""
    stages, install = load_recipe(REPO / "models" / "sdgmnet-half.recipe.toml")
    assert install.resolve() == (REPO / "models" / "sdgmnet-half.pt").resolve()
    configs = stage_configs(stages, tmp_path)
    assert [c.steps for c in configs] == [s.steps for s in stages] and configs[0].init is None
    for previous, config in zip(configs, configs[1:]):
        assert config.init == previous.out and config.deadline is None
    assert all(Path(c.out).parent.parent == tmp_path.resolve() for c in configs)  # --work leaves data/ alone
    own = stage_configs(stages)
    assert [Path(c.out).name for c in own] == [Path(c.out).name for c in configs]


def test_a_recipe_runs_its_stages_in_order_and_installs_the_last(tmp_path: Path) -> None:
    folder = require_shared("scenes", "kermit", "images")
    photo = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[0]
    build_homography_dataset([photo], tmp_path / "patches.h5", warps_per_photo=2, max_keypoints=120, seed=3)
    common = 'data = ["patches.h5"]\nidentities_per_batch = 16\nvalidation_identities = 20\nwarmup = 1\n'
    (tmp_path / "a.toml").write_text(common + 'out = "a/a.pt"\nsteps = 50\n')
    (tmp_path / "b.toml").write_text(common + 'out = "b/b.pt"\ninit = "not-used.pt"\nsteps = 50\nlabel_loss = "ddtas"\n')
    (tmp_path / "r.toml").write_text('install = "final.pt"\n[[stage]]\nconfig = "a.toml"\nsteps = 2\n'
                                     '[[stage]]\nconfig = "b.toml"\nsteps = 1\n')
    target = run_recipe(tmp_path / "r.toml", work=tmp_path / "work")
    assert target == tmp_path / "final.pt"
    assert target.read_bytes() == (tmp_path / "work" / "b" / "b.pt").read_bytes()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    log_b = [json.loads(line) for line in (tmp_path / "work" / "b" / "train.log.jsonl").read_text().splitlines()]
    start = next(e for e in log_b if e.get("event") == "start")
    assert start["config"]["init"] == str(tmp_path / "work" / "a" / "a.pt") and start["config"]["steps"] == 1
    _, meta = load_sdgmnet(str(target))
    assert meta["step"] == 1 and meta["init"] == str(tmp_path / "work" / "a" / "a.pt")


@pytest.mark.parametrize("text", ['[[stage]]\nconfig = "a.toml"\nsteps = 2\n', 'install = "x.pt"\n',
                                  'install = "x.pt"\n[[stage]]\nconfig = "a.toml"\n'])
def test_a_bad_recipe_is_one_line_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
