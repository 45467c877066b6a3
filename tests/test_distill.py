"""The compact SDGMNet variant and its distillation from the shipped network (matcher.training.distill)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from matcher.descriptors import SDGMNet, load_sdgmnet, save_sdgmnet
from matcher.descriptors.engines import TorchEngine
from matcher.errors import ModelWeightsError
from matcher.training.datasets import build_homography_dataset
from matcher.training.distill import DistillConfig, _Progress, distill, load_distill_config

from conftest import require_shared


@pytest.fixture(scope="module")
def photo_patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Homography patches of one real 640x480 photo (kermit), ~200 identities."""
    folder = require_shared("scenes", "kermit", "images")
    photo = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[0]
    out = tmp_path_factory.mktemp("distill") / "patches.h5"
    build_homography_dataset([photo], out, warps_per_photo=2, max_keypoints=200, seed=3)
    return out


def test_half_variant_has_a_quarter_of_the_flops_and_the_same_contract(tmp_path: Path) -> None:
    full, half = SDGMNet(), SDGMNet(channels="half")
    assert full.flops_per_patch() == 78_184_448  # the 78.2 MFLOP of bench/descriptor_throughput.py
    assert 3.8 < full.flops_per_patch() / half.flops_per_patch() < 4.0
    out = half.eval()(torch.rand(5, 1, 32, 32))
    assert out.shape == (5, 128) and torch.allclose(out.norm(dim=1), torch.ones(5))
    save_sdgmnet(half, tmp_path / "h.pt", {"magnification": 6.0})
    loaded, meta = load_sdgmnet(str(tmp_path / "h.pt"))  # the variant comes from the file, no setting
    assert loaded.variant == "half" and meta["channels"] == [16, 16, 32, 32, 64, 64]
    x = torch.rand(40, 1, 32, 32)
    assert torch.allclose(TorchEngine(loaded)(x), TorchEngine(half)(x), atol=1e-6)


def test_weights_of_unknown_shape_are_refused_in_one_line(tmp_path: Path) -> None:
    state = SDGMNet(channels="half").state_dict()
    del state["features.3.0.weight"]
    torch.save({"format": "matcher.sdgmnet/1", "state_dict": state, "meta": {}}, tmp_path / "bad.pt")
    with pytest.raises(ModelWeightsError, match="bad.pt: weights do not fit SDGMNet"):
        load_sdgmnet(str(tmp_path / "bad.pt"))


def test_distillation_writes_usable_weights_and_resumes(photo_patches: Path, tmp_path: Path) -> None:
    config = tmp_path / "d.toml"
    config.write_text(
        f'data = ["{photo_patches}"]\nout = "run/student.pt"\nlog_file = "run/log.jsonl"\nsteps = 2\n'
        "identities_per_batch = 32\neval_every = 2\ncheckpoint_every = 1\nvalidation_identities = 20\nwarmup = 1\n"
    )
    cfg = load_distill_config(config)
    assert Path(cfg.out) == tmp_path / "run" / "student.pt" and cfg.channels == "half"
    first = distill(cfg)
    assert first["step"] == 2 and 0 < first["mnn_agreement"] <= 1
    student, meta = load_sdgmnet(cfg.out)
    assert student.variant == "half" and meta["distilled_from"] == "sdgmnet" and meta["magnification"] == 6.0
    best = distill(load_distill_config(config, {"steps": 4}))  # continues from the step-2 checkpoint
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"event": "resumed", "step": 2} in events
    assert [e["step"] for e in events if "cos_mean" in e] == [2, 4]
    assert best["step"] in (2, 4)


def test_a_resumed_run_keeps_the_deadline_its_first_sitting_fixed(photo_patches: Path, tmp_path: Path) -> None:
    """``deadline = "HH:MM"`` is fixed as a date and time when the run starts and kept in the checkpoint: a run
    resumed after that time does not take the next day's HH:MM as a new deadline."""
    import datetime as dt

    config = tmp_path / "d.toml"
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)).strftime("%H:%M")
    config.write_text(
        f'data = ["{photo_patches}"]\nout = "run/student.pt"\nlog_file = "run/log.jsonl"\nsteps = 4\n'
        "identities_per_batch = 32\neval_every = 2\ncheckpoint_every = 1\nvalidation_identities = 20\nwarmup = 1\n"
        f'deadline = "{deadline}"\n'
    )
    cfg = load_distill_config(config, {"steps": 1})
    distill(cfg)
    state = torch.load(cfg.checkpoint_path, weights_only=True)
    fixed = dt.datetime.fromisoformat(state["deadline_at"])
    assert dt.timedelta(hours=2) < fixed - dt.datetime.now(dt.timezone.utc) < dt.timedelta(hours=3)
    # as if the run had been stopped at step 1 and resumed after its deadline
    state["deadline_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).isoformat()
    state["progress"] = 0.25
    torch.save(state, cfg.checkpoint_path)
    distill(load_distill_config(config))
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"event": "end of schedule", "step": 1} in events  # no step after the deadline


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown SDGMNet variant 'tiny'"):
        SDGMNet(channels="tiny")
    with pytest.raises(TypeError):
        DistillConfig(data=[], out="x.pt", no_such_setting=1)  # type: ignore[call-arg]


def test_the_schedule_ends_at_the_deadline_or_the_last_step() -> None:
    import datetime as dt

    from matcher.training.distill import _deadline_time

    now = dt.datetime.now(dt.timezone.utc)
    soon = (now + dt.timedelta(hours=2)).strftime("%H:%M")
    by_steps = _Progress(DistillConfig(data=[], out="x.pt", steps=100, deadline=soon), start=0, resumed_progress=0.0)
    assert by_steps(50) == pytest.approx(0.5, abs=0.01)  # two hours away: the step share leads
    assert by_steps(100) == 1.0
    resumed = _Progress(DistillConfig(data=[], out="x.pt", steps=100, deadline=soon), start=50, resumed_progress=0.7)
    assert resumed(50) == pytest.approx(0.7, abs=0.01)  # a resumed run continues its decay where it stopped
    past = _Progress(DistillConfig(data=[], out="x.pt", steps=100, deadline=soon), start=50, resumed_progress=0.7,
                     deadline_at=now - dt.timedelta(minutes=1))
    assert past(50) == 1.0  # resumed after the deadline its first sitting fixed: no step is run
    # HH:MM is the first such time after the start, also across midnight
    late = dt.datetime(2026, 12, 1, 23, 30, tzinfo=dt.timezone.utc)
    assert _deadline_time("01:30", late) == dt.datetime(2026, 12, 2, 1, 30, tzinfo=dt.timezone.utc)
    assert _deadline_time("23:45", late) == dt.datetime(2026, 12, 1, 23, 45, tzinfo=dt.timezone.utc)
    assert _deadline_time("23:30", late) == dt.datetime(2026, 12, 2, 23, 30, tzinfo=dt.timezone.utc)
    assert _deadline_time(None, late) is None


@pytest.mark.parametrize("setting, expected", [
    ('channels = "quarter"', "channels = 'quarter': must be one of full, half"),
    ("steps = 0", "steps = 0: must be"),
    ("no_such_setting = 1", "unknown keys no_such_setting"),
    ("mix = [1.0, 2.0]", "mix needs one non-negative share per data file"),
    ("distill_sets = [3]", "distill_sets must list data file indices"),
    ("wide_pairs = 1.5", "wide_pairs = 1.5: must be between 0.0 and 1.0"),
    ("wide_pairs = 0.5\nviews_per_identity = 3", "wide_pairs needs views_per_identity = 2"),
    ('validation_views = "wide"', "validation_views = 'wide': must be one of first, widest"),
    ('extra_label_loss = "no_such_loss"', "unknown extra_label_loss 'no_such_loss'"),
    ("w_extra_label = 1.0", "w_extra_label need extra_label_loss"),
    ('extra_label_loss = "ddtas"\nextra_label_loss_options = { no_such_option = 1 }', "no_such_option"),
])
def test_a_bad_distillation_config_is_one_line_naming_the_file(tmp_path: Path, setting: str, expected: str) -> None:
    """The distillation config is checked by the pipeline's mechanism (config.check_settings) at load."""
    from matcher.errors import ConfigError
    from matcher.training.distill import load_distill_config

    path = tmp_path / "run.toml"
    path.write_text(f'data = ["patches.h5"]\nout = "student.pt"\n{setting}\n')
    with pytest.raises(ConfigError, match=expected) as caught:
        load_distill_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_second_label_loss_is_added_with_its_weight_and_logged() -> None:
    """extra_label_loss (e.g. DDTAS beside HardNet): its term enters the total with w_extra_label and is reported
    as ``extra_label``; unset, the loss is the HardNet-only one."""
    from matcher.losses import get_loss
    from matcher.training.distill import distill_losses

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(32).repeat_interleave(2)
    student = torch.nn.functional.normalize(torch.randn(64, 128, generator=gen), dim=1)
    student = torch.nn.functional.normalize(student + 0.1 * student.view(32, 2, 128).flip(1).reshape(64, 128), dim=1)
    teacher = student.clone()  # weak positives (cosine ~0.1): DDTAS mines some anchors, so its term is > 0
    hardnet = get_loss("hardnet")
    alone_cfg = DistillConfig(data=[], out="x.pt", w_label=1.0)
    alone, alone_terms = distill_losses(student, teacher, labels, hardnet, alone_cfg)
    assert "extra_label" not in alone_terms
    both_cfg = DistillConfig(data=[], out="x.pt", w_label=1.0, extra_label_loss="ddtas",
                             extra_label_loss_options={"m": 0.2}, w_extra_label=2.0)
    ddtas = get_loss("ddtas", m=0.2)
    both, terms = distill_losses(student, teacher, labels, hardnet, both_cfg, extra_label_loss=ddtas)
    assert terms["label"] == pytest.approx(alone_terms["label"]) and terms["extra_label"] > 0
    assert float(both) == pytest.approx(float(alone) + 2.0 * terms["extra_label"], rel=1e-5)


def test_threshold_loss_rewards_one_threshold_for_all_anchors() -> None:
    """Positives above tau and every anchor's hardest negative below it: low loss; a positive pair far apart
    (even when it is still its anchor's nearest neighbour, which a per-anchor loss accepts) raises it."""
    from matcher.training.distill import threshold_loss

    labels = torch.tensor([0, 0, 1, 1])
    tau = torch.tensor(0.5)
    e = torch.eye(4)
    calibrated = torch.nn.functional.normalize(torch.stack([e[0] + 0.1 * e[1], e[0], e[2], e[2] + 0.1 * e[3]]), dim=1)
    assert float(threshold_loss(calibrated, labels, tau, 0.05)) < 0.01
    # identity 0's views at cosine 0.37 (still nearest neighbours: cosine 0 to everything else)
    far = torch.nn.functional.normalize(torch.stack([e[0], e[0] + 2.5 * e[1], e[2], e[2]]), dim=1)
    assert float(threshold_loss(far, labels, tau, 0.05)) > 1.0


def test_mixed_batches_take_each_files_share_and_skip_validation_rows() -> None:
    import numpy as np

    from matcher.training.distill import _batches

    labels = torch.arange(400).repeat_interleave(2)  # 400 identities x 2 views; file 0: ids 0-299, file 1: 300-399
    source = (labels >= 300).long()
    train_idx = np.flatnonzero(labels.numpy() % 10 != 0)  # every tenth identity held out
    config = DistillConfig(data=["a.h5", "b.h5"], out="x.pt", steps=5, identities_per_batch=20, mix=[0.25, 0.75])
    for batch in _batches(labels, source, train_idx, config):
        assert len(batch) == 40 and set(batch) <= set(train_idx)
        assert (source[batch] == 1).sum() == 30  # 75 % of the identities from file 1, though it holds 25 %


def test_wide_pairs_draw_the_widest_views_of_camera_track_rows_only() -> None:
    """``wide_pairs``: identities of files with viewing rays show their two views at the widest angle (a share
    of them); rows without rays (NaN, e.g. homographies) are drawn as before."""
    import numpy as np

    from matcher.training.distill import _batches

    labels = torch.arange(200).repeat_interleave(4)  # 200 identities x 4 views; file 0: ids 0-99, file 1: 100-199
    source = (labels >= 100).long()
    angles = torch.tensor([0.0, 10.0, 50.0, 20.0]).repeat(200).deg2rad()  # view 2 is 50 deg from view 0
    rays = torch.stack([angles.cos(), angles.sin(), torch.zeros_like(angles)], 1)
    rays[source == 0] = float("nan")
    train_idx = np.arange(len(labels))
    config = DistillConfig(data=["a.h5", "b.h5"], out="x.pt", steps=20, identities_per_batch=20, mix=[0.5, 0.5],
                           wide_pairs=1.0)
    for batch in _batches(labels, source, train_idx, config, rays):
        pairs = (torch.from_numpy(batch) % 4).view(-1, 2).sort(1).values
        from_file_1 = source[torch.from_numpy(batch[::2])] == 1
        assert (pairs[from_file_1] == torch.tensor([0, 2])).all()
        assert not (pairs[~from_file_1] == torch.tensor([0, 2])).all(1).all()  # random pairs in file 0
    plain = list(_batches(labels, source, train_idx, DistillConfig(data=["a.h5", "b.h5"], out="x.pt", steps=5,
                                                                     identities_per_batch=20, mix=[0.5, 0.5]), rays))
    no_rays = list(_batches(labels, source, train_idx, DistillConfig(data=["a.h5", "b.h5"], out="x.pt", steps=5,
                                                                       identities_per_batch=20, mix=[0.5, 0.5])))
    assert all((a == b).all() for a, b in zip(plain, no_rays))  # wide_pairs = 0: the draws of before


def test_widest_validation_views_are_the_widest_pair_where_rays_are_known() -> None:
    """``validation_views = "widest"``: validation compares each identity's two views at the widest angle (checked
    against a loop over all pairs); identities with an unknown ray keep their first two views."""
    import itertools

    import numpy as np

    from matcher.training.distill import _two_views

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 30, (150,), generator=gen)
    rays = torch.nn.functional.normalize(torch.randn(150, 3, generator=gen), dim=1)
    rays[labels == 7] = float("nan")
    first, second = _two_views(labels)
    wide_a, wide_b = _two_views(labels, rays)
    assert torch.equal(labels[wide_a], labels[first]) and torch.equal(labels[wide_b], labels[first])
    for a, b, f, s in zip(wide_a.tolist(), wide_b.tolist(), first.tolist(), second.tolist()):
        rows = np.flatnonzero(labels.numpy() == int(labels[f]))
        if int(labels[f]) == 7:
            assert (a, b) == (f, s)
            continue
        widest = min(float(rays[i] @ rays[j]) for i, j in itertools.combinations(rows, 2))
        assert float(rays[a] @ rays[b]) == pytest.approx(widest, abs=1e-6) and a != b


def test_rays_survive_saving_and_concatenation(tmp_path: Path) -> None:
    """A camera-track set's rays are written and read back; concatenated with a set without rays (homographies),
    those rows are NaN; a set without rays reads back as None."""
    from matcher.training.datasets import concat_patch_sets, load_patch_set, save_patch_set
    from matcher.training.homography_patches import PatchSet

    def patch_set(n: int, rays: torch.Tensor | None) -> PatchSet:
        labels = torch.arange(n // 2).repeat_interleave(2)
        return PatchSet(torch.rand(n, 1, 32, 32), labels, torch.zeros(n, dtype=torch.long), torch.arange(n),
                        ("a.jpg",), 6.0, rays)

    rays = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    save_patch_set(patch_set(6, rays), tmp_path / "cam.h5", "test", 6.0)
    save_patch_set(patch_set(4, None), tmp_path / "hom.h5", "test", 6.0)
    cam, hom = load_patch_set(tmp_path / "cam.h5"), load_patch_set(tmp_path / "hom.h5")
    assert torch.allclose(cam.rays, rays) and hom.rays is None
    both = concat_patch_sets([hom, cam])
    assert both.rays.shape == (10, 3) and both.rays[:4].isnan().all() and torch.allclose(both.rays[4:], rays)
    assert concat_patch_sets([hom, hom]).rays is None
