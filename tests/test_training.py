"""The trainer: exact resume from a checkpoint, config files and datasets on disk (finetune: test_finetune.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from matcher.cli import main
from matcher.descriptors import load_sdgmnet
from matcher.errors import ConfigError
from matcher.training.datasets import build_homography_dataset, load_patch_set
from matcher.training.hpatches_patches import patches_from_homography_sequence
from matcher.losses import get_loss
from matcher.training.trainer import TrainConfig, build_hooks, export_checkpoint, load_train_config, train
from conftest import require_shared


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("patches")
    build_homography_dataset(("coffee", "brick"), folder / "train.h5", warps_per_photo=2, max_keypoints=120)
    build_homography_dataset(("camera",), folder / "held.h5", warps_per_photo=2, max_keypoints=120, seed=1)
    return folder / "train.h5", folder / "held.h5"


def _config(tiny_data: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    values = dict(train=[str(tiny_data[0])], heldout=[str(tiny_data[1])], out=str(out), loss="sdgm", steps=6,
                  identities_per_batch=32, eval_every=3, checkpoint_every=2, eval_pairs=500, lr=0.5)
    values.update(kw)
    return TrainConfig(**values)


def test_dataset_roundtrip_keeps_patches_to_one_grey_level(tiny_data: tuple[Path, Path]) -> None:
    patch_set = load_patch_set(tiny_data[0])
    assert patch_set.patches.shape[1:] == (1, 32, 32)
    counts = np.bincount(patch_set.labels.numpy())
    assert counts.min() >= 2
    assert torch.all(patch_set.patches * 255 == torch.round(patch_set.patches * 255))


@pytest.mark.parametrize("loss", ["sdgm", "hardnet"])
def test_resumed_training_ends_with_the_same_weights(tiny_data: tuple[Path, Path], tmp_path: Path, loss: str) -> None:
    straight = train(_config(tiny_data, tmp_path / "a" / "m.pt", loss=loss), progress=False)
    cut = train(_config(tiny_data, tmp_path / "b" / "m.pt", loss=loss), progress=False, stop_after=3)
    assert cut.steps == 3 and not (tmp_path / "b" / "m.pt").exists()
    assert export_checkpoint(_config(tiny_data, tmp_path / "b" / "m.pt", loss=loss), tmp_path / "cut.pt") == 3
    assert load_sdgmnet(str(tmp_path / "cut.pt"))[1]["steps"] == 3
    resumed = train(_config(tiny_data, tmp_path / "b" / "m.pt", loss=loss), progress=False)
    assert resumed.resumed_from == 3
    a, _ = load_sdgmnet(str(straight.out))
    b, meta = load_sdgmnet(str(resumed.out))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history] == [0.0, 3.0, 6.0]
    assert meta["loss"] == loss and len(meta["history"]) == 3


def test_config_file_paths_are_relative_to_it(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config_path = tmp_path / "run.toml"
    config_path.write_text(
        f'train = ["{tiny_data[0]}"]\nheldout = ["{tiny_data[1]}"]\nout = "out/model.pt"\nloss = "hardnet"\n'
        'steps = 2\nidentities_per_batch = 16\n[loss_options]\nmargin = 1.0\n'
    )
    config = load_train_config(config_path)
    assert config.out == str(tmp_path / "out" / "model.pt") and config.loss_options == {"margin": 1.0}
    result = CliRunner().invoke(main, ["train", str(config_path), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.pt").is_file() and "held-out FPR95" in result.output
    config_path.write_text('steps = 2\nbogus = 1\n')
    result = CliRunner().invoke(main, ["train", str(config_path), "-q"])
    assert result.exit_code == 2 and "bogus" in result.output


def test_miner_runs_as_a_hook_and_older_checkpoints_are_refused(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config = _config(tiny_data, tmp_path / "m.pt", loss="smart_mining", miner="smart", identities_per_batch=16,
                     heldout=[], steps=4)
    cut = train(config, progress=False, stop_after=2)
    state = torch.load(config.checkpoint_path(), weights_only=True)
    assert cut.steps == 2 and int(state["hooks"][0]["refreshes"]) >= 1 and int(state["hooks"][0]["steps"]) == 2
    del state["format"]  # as a checkpoint written before miners were split from the losses
    torch.save(state, config.checkpoint_path())
    with pytest.raises(ConfigError, match="older matcher.*cannot be resumed"):
        train(config, progress=False)
    assert export_checkpoint(config, tmp_path / "old.pt") == 2  # its weights can still be exported


def test_sdgm_trains_on_smart_miner_batches(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    # SDGM's margin is a method of its running statistics, not the miner's admission margin (issue 11's combination)
    config = _config(tiny_data, tmp_path / "m.pt", loss="sdgm", miner="smart", identities_per_batch=16, heldout=[],
                     steps=3)
    assert train(config, progress=False).steps == 3
    assert build_hooks(config, get_loss("sdgm"))[0].margin == 0.5
    assert build_hooks(config, get_loss("smart_mining", margin=0.3))[0].margin == 0.3


@pytest.mark.parametrize("line, message", [
    ('loss = "arcface"', "loss = 'arcface': must be one of ddtas, dgcrl, hardnet, sdgm, smart_mining"),
    ('schedule = "cosine"', "must be one of halving, linear, constant"),
    ('loss = "hardnet"\n[loss_options]\nrefresh_every = 5', 'now miner = "smart" and [miner_options]'),
    ('otg = true', "the online threshold generator is DDTAS's"),
    ("wide_pairs = 0.5\nviews_per_identity = 3", "wide_pairs needs views_per_identity = 2"),
])
def test_training_config_errors_are_one_line(tmp_path: Path, line: str, message: str) -> None:
    config_path = tmp_path / "run.toml"
    config_path.write_text(f'train = ["a.h5"]\n{line}\n')
    result = CliRunner().invoke(main, ["train", str(config_path), "-q"])
    assert result.exit_code == 2 and message in result.output and str(config_path) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_hpatches_patches_follow_the_ground_truth_homography() -> None:
    seq = require_shared("homography", "v_churchill")
    patch_set = patches_from_homography_sequence(seq, max_keypoints=300)
    labels = patch_set.labels.numpy()
    assert np.bincount(labels).min() >= 2 and patch_set.photo.max() == 5
    # Views of one keypoint look alike; views of different keypoints do not.
    p = patch_set.patches.flatten(1)
    p = (p - p.mean(1, keepdim=True)) / p.std(1, keepdim=True).clamp_min(1e-6)
    first = {lab: i for i, lab in reversed(list(enumerate(labels)))}
    same = [float((p[i] * p[first[labels[i]]]).mean()) for i in range(len(labels)) if first[labels[i]] != i]
    other = [float((p[i] * p[(i + 97) % len(labels)]).mean()) for i in range(0, len(labels), 7)]
    assert np.median(same) > 0.8 and np.median(other) < 0.4
