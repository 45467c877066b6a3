"""Spatial-neighbour hard negatives (matcher.training.spatial_negatives) and their use in distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from matcher.config import load_config
from matcher.detect import Keypoints, detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.losses import get_loss
from matcher.patches import extract_patches, lafs_from_keypoints
from matcher.training.datasets import build_homography_dataset, load_patch_set, save_patch_set
from matcher.training.distill import (
    NeighbourIndex,
    distill,
    hardnet_with_negatives,
    load_distill_config,
    threshold_loss,
)
from matcher.training.homography_patches import PatchSet
from matcher.training.spatial_negatives import nearest_neighbours, neighbour_patch_set

from conftest import require_shared


@pytest.fixture(scope="module")
def view() -> tuple[np.ndarray, Keypoints]:
    """One real photo (kermit) at 640 px with the default preset's DoG keypoints."""
    folder = require_shared("scenes", "kermit", "images")
    name = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")[0]
    small, _, _ = resize_for_detection(read_image(folder, name).gray, 640)
    return small, detect_keypoints(small, load_config("default").detection)


def test_nearest_neighbours_follow_the_benchmarks_exclusion_rule() -> None:
    xy = np.array([[0, 0], [1, 0], [4, 0], [0, 5], [10, 0], [0, 20]], np.float32)
    scales = np.array([12.0, 1, 1, 1, 1, 1], np.float32)  # keypoint 0: sigma/2 = 6 px > 3 px
    kps = Keypoints(xy, scales, np.zeros(6, np.float32), np.ones(6, np.float32))
    near = nearest_neighbours(kps, np.array([0, 1]), k=3)
    assert near[0].tolist() == [4, 5, -1]  # 1 (1 px), 2 (4 px), 3 (5 px) lie within sigma/2 = 6 px
    assert near[1].tolist() == [2, 3, 4]  # keypoint 0 lies within 3 px of keypoint 1; 2 at 3 px exactly is out


def test_neighbour_patches_are_the_nearest_other_keypoints_cut_as_the_pipeline_does(view) -> None:
    gray, kps = view
    obs = np.arange(0, 60, 2)
    tracks = PatchSet(extract_patches(gray, lafs_from_keypoints(kps.select(obs), 6.0)),
                      torch.arange(obs.size) + 100, torch.zeros(obs.size, dtype=torch.int64), torch.from_numpy(obs),
                      ("a.jpg", "b.jpg"), 6.0)
    # view 1 claims the same keypoint indices but its stored patches are not of those keypoints: skipped
    wrong = PatchSet(torch.cat([tracks.patches, tracks.patches.flip(-1)]), torch.cat([tracks.labels] * 2),
                     torch.cat([tracks.photo, tracks.photo + 1]), torch.cat([tracks.view] * 2), tracks.names, 6.0)
    nb, skipped = neighbour_patch_set([gray, gray], [kps, kps], wrong, k=4)
    assert skipped == ["b.jpg"]
    assert len(nb) == 4 * obs.size and set(nb.labels.tolist()) == set(tracks.labels.tolist())
    owner = nb.labels.numpy() - 100
    dist = np.linalg.norm(kps.xy[nb.view.numpy()] - kps.xy[obs[owner]], axis=1)
    assert (dist >= np.maximum(3.0, 0.5 * kps.scales[obs[owner]])).all()
    assert torch.allclose(nb.patches, extract_patches(gray, lafs_from_keypoints(kps.select(nb.view.numpy()), 6.0)))


def test_neighbours_need_the_detector_the_tracks_were_built_with(tmp_path: Path) -> None:
    """Tracks cut with one detector (here a 300-keypoint budget, as the training data's 4,096 at DoG 0.02 filled
    its budget on 1600 px photos): rebuilt with it, the neighbours come; with the default preset's detector (5,120
    at 0.01) no view reproduces: a one-line error naming the file, nothing written."""
    from matcher.config import DetectionConfig
    from matcher.errors import ConfigError
    from matcher.training.spatial_negatives import build_neighbour_dataset

    folder = require_shared("scenes", "kermit", "images")
    name = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")[0]
    small, _, _ = resize_for_detection(read_image(folder, name).gray, 640)
    built_with = DetectionConfig(max_keypoints=300)
    kps = detect_keypoints(small, built_with)
    obs = np.arange(0, 300, 15)
    tracks = PatchSet(extract_patches(small, lafs_from_keypoints(kps.select(obs), 6.0)), torch.arange(obs.size),
                      torch.zeros(obs.size, dtype=torch.int64), torch.from_numpy(obs), (name,), 6.0)
    save_patch_set(tracks, tmp_path / "tracks.h5", source="test", magnification=6.0)
    nb = build_neighbour_dataset(tmp_path / "tracks.h5", folder, tmp_path / "nb.h5", max_edge=640, k=2,
                                 detection=built_with)
    assert len(nb) == 2 * obs.size
    with pytest.raises(ConfigError, match="no view's re-detected keypoints reproduce") as caught:
        build_neighbour_dataset(tmp_path / "tracks.h5", folder, tmp_path / "nb2.h5", max_edge=640, k=2)
    assert "tracks.h5" in str(caught.value) and "\n" not in str(caught.value) and not (tmp_path / "nb2.h5").exists()


def test_neighbour_index_finds_the_rows_of_an_observation() -> None:
    index = NeighbourIndex(np.array([5, 5, 5, 7, 5]), np.array([0, 0, 1, 0, 0]))
    rows, owner = index.lookup(np.array([5, 7, 9, 5]), np.array([0, 0, 0, 1]))
    assert sorted(rows[owner == 0].tolist()) == [0, 1, 4] and rows[owner == 1].tolist() == [3]
    assert rows[owner == 3].tolist() == [2] and 2 not in owner
    rows, owner = index.lookup(np.array([5]), np.array([0]), per_row=2, rng=np.random.default_rng(0))
    assert rows.size == 2 and set(rows) <= {0, 1, 4}


def test_hardnet_with_negatives_is_hardnet_without_them_and_feels_a_close_neighbour() -> None:
    torch.manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.allclose(hardnet_with_negatives(desc, labels), get_loss("hardnet")(desc, labels), atol=1e-6)
    near = torch.nn.functional.normalize(desc[1] + 0.05 * torch.randn(16), dim=0)  # a neighbour of view 1
    with_nb = hardnet_with_negatives(torch.cat([desc, near[None]]), torch.cat([labels, torch.tensor([-1])]))
    assert float(with_nb) > float(hardnet_with_negatives(desc, labels)) + 0.05
    # the threshold term counts it as a negative of identity 0, but a negative-only row is no anchor of its own
    tau = torch.tensor(0.0)
    base = threshold_loss(desc, labels, tau, 0.1)
    single = torch.cat([labels, torch.tensor([-1])])
    assert float(threshold_loss(torch.cat([desc, near[None]]), single, tau, 0.1)) > float(base)
    x = torch.cat([desc, near[None]])
    sim = x @ x.T
    same = single[:, None] == single[None, :]
    neg = sim.masked_fill(same, -2.0).max(1).values[:8]  # the 8 rows with a positive only
    pos = sim[same & ~torch.eye(9, dtype=torch.bool)]
    expected = torch.nn.functional.softplus(-pos / 0.1).mean() + torch.nn.functional.softplus(neg / 0.1).mean()
    assert torch.allclose(threshold_loss(x, single, tau, 0.1), expected, atol=1e-6)


@pytest.mark.parametrize("label_loss", ['label_loss = "hardnet"', 'label_loss = "ddtas"\nlabel_loss_options = { m = 0.2 }'])
def test_distillation_with_spatial_negatives_trains_and_validates_on_them(tmp_path: Path, label_loss: str) -> None:
    folder = require_shared("scenes", "kermit", "images")
    photo = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[0]
    data = tmp_path / "patches.h5"
    ps = build_homography_dataset([photo], data, warps_per_photo=2, max_keypoints=120, seed=3)
    # stand-in neighbours: for every row, two patches of other identities, tied to that row's (label, photo)
    shift = torch.roll(torch.arange(len(ps)), 7)
    nb = PatchSet(torch.cat([ps.patches[shift], ps.patches.flip(-1)]), torch.cat([ps.labels] * 2),
                  torch.cat([ps.photo] * 2), torch.cat([ps.view] * 2), ps.names, 6.0)
    save_patch_set(nb, tmp_path / "nb.h5", source="test", magnification=6.0)
    config = tmp_path / "d.toml"
    config.write_text(
        f'data = ["{data}"]\nneighbours = ["nb.h5"]\nspatial_negatives = 1\nout = "run/s.pt"\n'
        'log_file = "run/log.jsonl"\nsteps = 2\nidentities_per_batch = 16\neval_every = 2\ncheckpoint_every = 2\n'
        f"validation_identities = 20\nwarmup = 1\nw_threshold = 0.5\nselect = \"fpr95\"\n{label_loss}\n"
    )
    cfg = load_distill_config(config)
    assert cfg.neighbours == [str(tmp_path / "nb.h5")] and len(load_patch_set(Path(cfg.neighbours[0]))) == 2 * len(ps)
    best = distill(cfg)
    assert best["step"] == 2 and 0 <= best["fpr95_student"] <= 1
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e.get("event") == "start")
    assert start["val_negatives"] > start["val_pairs"] / 2  # random negatives plus spatial ones
    step0 = next(e for e in events if e.get("step") == 0 and "rows" in e)
    assert step0["rows"] == 2 * 32  # 16 identities x 2 views, each with one neighbour row


def test_ddtas_takes_neighbour_rows_as_negatives_at_the_anchors_scale() -> None:
    """DDTAS (distill's label loss) mines a negative-only row like any other negative; its mean is over anchors,
    so adding far neighbour rows leaves the loss as it was and a close one raises it."""
    from matcher.training.distill import DistillConfig, distill_losses

    torch.manual_seed(0)
    config = DistillConfig(data=["a.h5"], out="s.pt", w_descriptor=0.0, w_relation=0.0, w_label=1.0,
                           label_loss="ddtas", label_loss_options={"m": 0.2}, spatial_negatives=2)
    loss = get_loss("ddtas", m=0.2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    centres = torch.nn.functional.pad(torch.randn(4, 8), (0, 8))  # identities in the first 8 dimensions
    desc = torch.nn.functional.normalize(centres[labels] + 0.4 * torch.nn.functional.pad(torch.randn(8, 8), (0, 8)), dim=1)
    alone = distill_losses(desc, desc, labels, loss, config)[1]["label"]
    assert alone == pytest.approx(float(loss(desc, labels)))
    far = torch.eye(16)[[8, 9]]  # cosine 0 to every row, far below every positive: never mined
    with_far = distill_losses(torch.cat([desc, far]), torch.cat([desc, far]), torch.cat([labels, torch.tensor([-1, -2])]),
                              loss, config)[1]["label"]
    assert with_far == pytest.approx(alone, rel=1e-5)
    near = torch.nn.functional.normalize(desc[1] + 0.05 * torch.randn(16), dim=0)[None]
    with_near = distill_losses(torch.cat([desc, near]), torch.cat([desc, near]), torch.cat([labels, torch.tensor([-1])]),
                               loss, config)[1]["label"]
    assert with_near > alone + 0.05


def test_spatial_negatives_need_neighbours_and_hardnet(tmp_path: Path) -> None:
    from matcher.errors import ConfigError

    path = tmp_path / "run.toml"
    path.write_text('data = ["p.h5"]\nout = "s.pt"\nspatial_negatives = 2\n')
    with pytest.raises(ConfigError, match="spatial_negatives needs neighbours"):
        load_distill_config(path)
    path.write_text('data = ["p.h5", "q.h5"]\nout = "s.pt"\nneighbours = ["n.h5"]\n')
    with pytest.raises(ConfigError, match="neighbours needs one patch file"):
        load_distill_config(path)
    path.write_text('data = ["p.h5"]\nout = "s.pt"\nneighbours = ["n.h5"]\nspatial_negatives = 2\nlabel_loss = "sdgm"\n')
    with pytest.raises(ConfigError, match="label_loss in hardnet, ddtas"):
        load_distill_config(path)
    path.write_text('data = ["p.h5"]\nout = "s.pt"\nlabel_loss = "ddtas"\nlabel_loss_options = { mm = 0.2 }\n')
    with pytest.raises(ConfigError, match="loss_options for 'ddtas'") as caught:
        load_distill_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    path.write_text('data = ["p.h5"]\nout = "s.pt"\nneighbours = ["n.h5"]\nspatial_negatives = 2\nlabel_loss = "ddtas"\n')
    assert load_distill_config(path).label_loss == "ddtas"
