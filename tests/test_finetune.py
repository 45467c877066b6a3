"""``matcher finetune``: positives from the reconstructed cameras, a held-out split of 3D points, and a report of
the hard-bin FPR95 and mAP before and after (on four small real photos, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from matcher.cli import main
from matcher.config import load_config
from matcher.training.finetune import BIN_LABELS, default_base, split_tracks, subset_views
from matcher.training.gt_tracks import Tracks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tuned(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """One fine-tuning run on the four 400x267 photos: 3 steps of 32 points without augmentation, the OpenVINO
    cache in a temp dir."""
    folder = tmp_path_factory.mktemp("finetune")
    preset = folder / "small.toml"
    preset.write_text("[detection]\nmax_keypoints = 1024\n")
    out = folder / "tuned.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATCHER_CACHE_DIR", str(folder / "cache"))
        result = CliRunner().invoke(main, ["finetune", str(tiny), "--out", str(out), "--pipeline", str(preset),
                                           "--steps", "3", "--batch", "32", "--no-augment", "-q"])
    assert result.exit_code == 0, result.output
    return out, json.loads((folder / "tuned.work" / "finetune.json").read_text()), result.output


def test_report_carries_hard_bin_metrics_before_and_after(tuned: tuple[Path, dict, str]) -> None:
    out, report, output = tuned
    assert out.is_file()
    assert report["registered"] >= 3 and report["heldout_tracks"] > 0 and report["train_tracks"] > 0
    # without --model it starts from the preset's weights: the default preset's compact network
    assert report["base"] == load_config("default").descriptor.weights == "sdgmnet-half"
    for when in ("before", "after"):
        assert list(report[when]) == list(BIN_LABELS)
        everything = report[when]["all"]
        assert everything["positives"] > 50 and 0.0 <= everything["fpr95"] <= 1.0 and 0.0 < everything["map"] <= 1.0
    assert sum(report["before"][label]["positives"] for label in BIN_LABELS[:-1]) <= report["before"]["all"]["positives"]
    # the same held-out pairs are scored before and after; the weights changed, so the scores did too
    assert all(report["before"][b]["positives"] == report["after"][b]["positives"] for b in BIN_LABELS)
    assert report["before"]["all"]["map"] != report["after"]["all"]["map"]
    assert "FPR95 before -> after" in output and "mAP before -> after" in output and str(out) in output
    # by default the keypoints are linked by the clean track rule (chance alignments rejected), and the report says so
    assert report["settings"]["tracks"] == "clean" and "track rule clean" in output
    # its training points carry their viewing rays (for --wide-pairs)
    from matcher.training.datasets import load_patch_set

    train_set = load_patch_set(out.with_name("tuned.work") / "train.h5")
    assert train_set.rays is not None and train_set.rays.shape == (len(train_set), 3)


def test_augmentation_setting_reaches_the_trainer(tuned: tuple[Path, dict, str]) -> None:
    """``--no-augment`` (the fixture's) reaches the trainer: the report's settings and the weights record it (the
    trainer's own default is to augment)."""
    from matcher.descriptors import load_sdgmnet
    from matcher.training.trainer import TrainConfig

    out, report, _ = tuned
    _, meta = load_sdgmnet(str(out))
    assert TrainConfig().augment is True
    assert report["settings"]["augment"] is False and meta["augment"] is False


def test_wide_pairs_reach_the_trainers_sampler() -> None:
    """``--wide-pairs``: the trainer draws each point's two views at the widest angle where the data have rays."""
    import torch

    from matcher.errors import ConfigError
    from matcher.training.finetune import FinetuneSettings
    from matcher.training.homography_patches import PatchSet
    from matcher.training.trainer import TrainConfig, _batches

    labels = torch.arange(40).repeat_interleave(3)
    angles = torch.tensor([0.0, 40.0, 10.0]).repeat(40).deg2rad()  # views 0 and 1 are the widest pair
    rays = torch.stack([angles.cos(), angles.sin(), torch.zeros_like(angles)], 1)
    data = PatchSet(torch.zeros(120, 1, 32, 32), labels, torch.zeros(120, dtype=torch.long), torch.arange(120),
                    ("a.jpg",), 6.0, rays)
    config = TrainConfig(steps=3, identities_per_batch=8, wide_pairs=1.0, seed=0)
    for batch in _batches(config, [], None, data, np.arange(120), 0):  # type: ignore[arg-type]
        assert (np.sort(batch.reshape(-1, 2) % 3, 1) == [0, 1]).all()
    with pytest.raises(ConfigError, match="--wide-pairs 1.5"):
        FinetuneSettings(wide_pairs=1.5).check()


def test_unknown_track_rule_is_a_one_line_error() -> None:
    from matcher.errors import ConfigError
    from matcher.training.finetune import FinetuneSettings

    with pytest.raises(ConfigError, match="--tracks loose: unknown track rule"):
        FinetuneSettings(tracks="loose").check()


def test_default_base_is_the_presets_sdgmnet() -> None:
    assert default_base(load_config("sdgmnet")) == "sdgmnet"
    assert default_base(load_config("rootsift")) == default_base(load_config("default")) == "sdgmnet-half"


def test_tuned_weights_match_a_scene(tuned: tuple[Path, dict, str], tiny: Path, tmp_path: Path) -> None:
    out, _, _ = tuned
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATCHER_CACHE_DIR", str(tmp_path / "cache"))
        result = CliRunner().invoke(main, ["match", str(tiny), "--out", str(tmp_path / "t.db"), "--model", str(out),
                                           "--max-keypoints", "512", "-q"])
    assert result.exit_code == 0, result.output


def _tracks(lengths: list[int], views: int = 5) -> Tracks:
    track = np.repeat(np.arange(len(lengths)), lengths)
    view = np.concatenate([np.arange(n) % views for n in lengths])
    return Tracks(np.zeros((len(lengths), 3)), track, view, np.arange(track.size))


def test_split_holds_out_whole_tracks() -> None:
    tracks = _tracks([2, 3, 4, 2, 5, 3, 2, 2])
    train, held = split_tracks(tracks, 0.25, seed=0)
    assert len(train) + len(held) == len(tracks) and len(held) == 2
    assert sorted(np.r_[train.keypoint, held.keypoint].tolist()) == tracks.keypoint.tolist()  # every observation once
    assert set(train.keypoint) .isdisjoint(held.keypoint)
    assert np.array_equal(np.unique(held.track), np.arange(len(held)))  # renumbered 0..T-1


def test_subset_keeps_the_busiest_views_and_tracks_still_seen_twice() -> None:
    tracks = _tracks([5, 5, 2, 3])  # views 0..4; view 0 and 1 are in every track
    views = [f"v{i}" for i in range(5)]
    chosen, sub = subset_views(views, tracks, 2)  # type: ignore[arg-type]
    assert chosen == ["v0", "v1"]
    assert len(sub) == 4 and sub.view.max() == 1 and np.all(np.bincount(sub.track) == 2)
