"""``matcher finetune``: fine-tune SDGMNet on one user's scene and report the hard-bin metrics before and after.

The scene's cameras come from its reconstruction (``match --reconstruct``, run here unless ``sparse`` is given);
its positives come from **geometry**, not from any descriptor's matches: the pipeline's DoG keypoints of every
registered image are linked by the reconstructed cameras alone (:mod:`matcher.training.gt_tracks`, the tracks
of the hard patch benchmark). The tracks (3D points) are split once, by a seeded random draw:

* **held-out points** (``held_out`` of them) are never trained on; the hard patch benchmark
  (:mod:`matcher.training.hard_benchmark`) scores the base and the tuned network on them: for each directed
  positive pair, the true keypoint against *every* keypoint the detector found in the other view (mAP), and FPR95
  with its spatial neighbours and its hardest wrong keypoint as negatives, per viewpoint-angle bin;
* **training points**: their patches (cut by the pipeline's own code) are the fine-tuning data
  (:func:`matcher.training.trainer.train`).

Cost is bounded where it grows with the scene: two-view track hypotheses only between each image and its
``partners`` most co-visible images (every image still confirms a track), the evaluation on at most
``eval_views`` views (every keypoint of each is described, twice), and a fixed number of steps. Everything is
seeded: the same scene, settings and seed give the same weights and the same report.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcher.config import PipelineConfig, load_config
from matcher.errors import ConfigError
from matcher.training.gt_tracks import TRACK_RULES
from matcher.training.hard_benchmark import ANGLE_BINS

if TYPE_CHECKING:
    from matcher.training.gt_tracks import Tracks, View

__all__ = [
    "FinetuneSettings",
    "FinetuneReport",
    "covisible_partners",
    "split_tracks",
    "subset_views",
    "hard_bin_metrics",
    "finetune_scene",
    "default_base",
    "format_report",
]

log = logging.getLogger("matcher")

#: the bins of the report: the hard benchmark's viewpoint-angle bins, then every held-out pair.
BIN_LABELS: tuple[str, ...] = tuple(f"{lo:g}-{hi:g} deg" for lo, hi in ANGLE_BINS) + ("all",)


@dataclass
class FinetuneSettings:
    """What ``matcher finetune`` does (defaults: a 25-image scene in about 10 minutes on 2 cores, README).

    Attributes:
        steps: optimiser steps; ``identities_per_batch`` tracks × 2 views per step.
        loss, optimizer, lr, schedule: as :class:`~matcher.training.trainer.TrainConfig`.
        held_out: fraction of the scene's tracks (3D points) never trained on, where the report is measured.
        partners: each image proposes two-view track hypotheses with this many most co-visible images.
        eval_views: the report uses the positives among at most this many views (those with the most held-out
            observations), each described in full before and after.
        seed: the split, the batches and the augmentation.
        tracks: the track rule of :data:`~matcher.training.gt_tracks.TRACK_RULES` that links the keypoints:
            ``clean`` (default; its null test, bench/track_null.py, finds ~2 % chance-aligned positives on
            monstree's reconstructed cameras) or ``published`` (the hard benchmark's first rule: ~70-86 % there).
        wide_pairs: the share of each batch's points shown at their two views of widest angle instead of two at
            random (:class:`~matcher.training.sampler.PKSampler`'s ``wide_share``; 0: all at random).
        augment: the trainer's patch augmentation (:mod:`matcher.training.augment`: a random rot90 and flip shared
            by each point's views, a small similarity per patch).
    """

    steps: int = 60
    identities_per_batch: int = 128
    loss: str = "hardnet"  # 2026-12-02, with augment off: lowest held-out FPR95 on monstree and entry-P10 (docs/eval.md)
    optimizer: str = "adam"
    lr: float = 3e-4
    schedule: str = "linear"
    held_out: float = 0.25
    partners: int = 2
    eval_views: int = 10
    seed: int = 0
    tracks: str = "clean"
    wide_pairs: float = 0.75  # monstree, 2026-12-02: held-out FPR95 after 57.0 % against 58.7 % at 0 (docs/eval.md)
    augment: bool = False  # the patches are already oriented by the detector, as in the shipped distillation

    def check(self) -> None:
        """One-line ConfigErrors for values that cannot work."""
        if not 0.0 < self.held_out < 1.0:
            raise ConfigError(f"--held-out {self.held_out}: must be a fraction strictly between 0 and 1")
        for name in ("steps", "identities_per_batch", "partners"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune {name} = {getattr(self, name)}: must be at least 1")
        if self.eval_views < 2:
            raise ConfigError(f"finetune eval_views = {self.eval_views}: must be at least 2")
        if not 0.0 <= self.wide_pairs <= 1.0:
            raise ConfigError(f"--wide-pairs {self.wide_pairs}: must be a share between 0 and 1")
        if self.tracks not in TRACK_RULES:
            raise ConfigError(f"--tracks {self.tracks}: unknown track rule (one of {', '.join(sorted(TRACK_RULES))})")


@dataclass
class FinetuneReport:
    """What a fine-tuning run did and measured (written as ``finetune.json`` in the work folder).

    ``before`` / ``after``: {bin label: {"fpr95", "map", "positives"}} on the held-out points (:data:`BIN_LABELS`);
    ``seconds``: wall time per stage.
    """

    images: str
    base: str
    out: str
    registered: int
    tracks: int
    train_tracks: int
    train_patches: int
    heldout_tracks: int
    eval_views: list[str]
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    settings: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def minutes(self) -> float:
        return sum(self.seconds.values()) / 60.0


def covisible_partners(reconstruction: Any, partners: int) -> set[tuple[str, str]]:
    """Each registered image with its ``partners`` images sharing the most 3D points (ties: by name).

    Returns:
        pairs of image names, sorted within each pair.
    """
    counts: Counter[tuple[int, int]] = Counter()
    for point in reconstruction.points3D.values():
        ids = sorted({element.image_id for element in point.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                counts[ids[a], ids[b]] += 1
    names = {i: reconstruction.images[i].name for i in reconstruction.reg_image_ids()}
    shared: dict[int, list[tuple[int, str]]] = {i: [] for i in names}
    for (a, b), n in counts.items():
        if a in names and b in names:
            shared[a].append((-n, names[b]))
            shared[b].append((-n, names[a]))
    pairs = set()
    for i, others in shared.items():
        for _, other in sorted(others)[:partners]:
            pairs.add(tuple(sorted((names[i], other))))
    return pairs


def _select_tracks(tracks: Tracks, keep: np.ndarray) -> Tracks:
    """The tracks with ``keep[t]`` (T,) bool, renumbered 0..T'-1 in order."""
    from matcher.training.gt_tracks import Tracks

    new_id = np.cumsum(keep) - 1
    rows = keep[tracks.track]
    return Tracks(tracks.points[keep], new_id[tracks.track[rows]], tracks.view[rows], tracks.keypoint[rows])


def split_tracks(tracks: Tracks, held_out: float, seed: int = 0) -> tuple[Tracks, Tracks]:
    """Split by track (3D point): a seeded random ``held_out`` fraction is held out. Returns (train, held out)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(tracks), bool)
    held[rng.choice(len(tracks), int(round(held_out * len(tracks))), replace=False)] = True
    return _select_tracks(tracks, ~held), _select_tracks(tracks, held)


def subset_views(views: list[View], tracks: Tracks, max_views: int) -> tuple[list[View], Tracks]:
    """At most ``max_views`` views (those with the most observations of ``tracks``; ties by index), and the
    tracks' observations in them (view indices renumbered; tracks left with one observation dropped)."""
    from matcher.training.gt_tracks import Tracks

    per_view = np.bincount(tracks.view, minlength=len(views))
    chosen = np.sort(np.argsort(-per_view, kind="stable")[:max_views])
    new_index = np.full(len(views), -1)
    new_index[chosen] = np.arange(chosen.size)
    rows = new_index[tracks.view] >= 0
    sub = Tracks(tracks.points, tracks.track[rows], new_index[tracks.view[rows]], tracks.keypoint[rows])
    keep = np.bincount(sub.track, minlength=len(tracks)) >= 2
    return [views[i] for i in chosen], _select_tracks(sub, keep)


def hard_bin_metrics(views: list[View], tracks: Tracks, weights: str | Path, magnification: float
                     ) -> dict[str, dict[str, float]]:
    """FPR95 and mAP per viewpoint-angle bin of the positive pairs of ``tracks`` (hard benchmark protocol), for
    the SDGMNet ``weights`` run by the pipeline's inference engine (``descriptor.engine = "auto"``).

    Returns:
        {bin label (:data:`BIN_LABELS`): {"fpr95", "map", "positives" (directed pairs)}}.
    """
    import torch

    from matcher.descriptors import load_sdgmnet
    from matcher.descriptors.engines import build_engine
    from matcher.training.hard_benchmark import bin_metrics, positive_pairs, score_pairs, view_patches

    model, _ = load_sdgmnet(str(weights))
    engine = build_engine(model.eval())
    descriptors = []
    for view in views:
        out = engine(view_patches(view, magnification))
        descriptors.append(np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out, np.float32))
    pairs = positive_pairs(views, tracks)
    scores = score_pairs(views, pairs, descriptors)
    angle = np.r_[pairs.angle, pairs.angle]
    masks = [(angle >= lo) & (angle < hi) for lo, hi in ANGLE_BINS] + [np.ones(angle.size, bool)]
    result = {}
    for label, mask in zip(BIN_LABELS, masks):
        m = bin_metrics(scores, mask)
        result[label] = {"fpr95": m["fpr95"], "map": m["map"], "positives": m["positives"]}
    return result


def _reconstruction(image_dir: Path, work: Path, config: PipelineConfig, sparse: Path | None, progress: bool):
    """The scene's pycolmap reconstruction: ``sparse`` if given, else ``match --reconstruct`` into ``work``."""
    from matcher.training.datasets import reconstruct_scene
    from matcher.training.gt_cameras import load_reconstruction

    if sparse is None:
        sparse = reconstruct_scene(image_dir, work, config, progress)
    try:
        return load_reconstruction(sparse)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def finetune_scene(
    image_dir: Path,
    out: Path,
    work: Path,
    base: str | None = None,
    settings: FinetuneSettings | None = None,
    pipeline: str = "default",
    sparse: Path | None = None,
    mapper: str = "incremental",
    progress: bool = True,
) -> FinetuneReport:
    """Fine-tune ``base`` on the scene in ``image_dir``; write ``out`` and ``work/finetune.json``.

    Args:
        image_dir: the scene's images.
        out: the tuned weights (.pt).
        work: working folder (database, reconstruction, patch datasets, report); reused when rerun.
        base: weights to start from (a shipped name or a .pt file); None: the ``pipeline`` preset's SDGMNet
            weights (the default preset's, models/sdgmnet-half.pt, for a preset that describes with RootSIFT).
        pipeline: the preset whose detector, image size and patches define the keypoints (and that
            reconstructs the scene when ``sparse`` is not given).
        sparse: an existing COLMAP model of ``image_dir`` (skips matching and mapping).
        mapper: ``incremental`` or ``global`` SfM when the scene is reconstructed here.
    """
    from matcher.training.datasets import save_patch_set
    from matcher.training.gt_cameras import reconstruction_cameras, reconstruction_undistorters
    from matcher.training.gt_tracks import build_tracks, detect_views, tracks_to_patch_set
    from matcher.training.trainer import TrainConfig, train

    settings = settings or FinetuneSettings()
    settings.check()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(pipeline, [{"mapping": {"mapper": mapper}}])
    base = base or default_base(config)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[stage] = round(now - t, 2)
        t = now
        log.info("finetune: %s %.1f s", stage, seconds[stage])

    rec = _reconstruction(Path(image_dir), work, config, sparse, progress)
    cameras = reconstruction_cameras(rec)
    if len(cameras) < 3:
        raise ConfigError(f"{image_dir}: {len(cameras)} images registered; fine-tuning needs at least 3")
    lap("reconstruction")
    views = detect_views(Path(image_dir), cameras, config.detection, config.images.max_edge,
                         undistort=reconstruction_undistorters(rec))
    lap("detection")
    tracks = build_tracks(views, TRACK_RULES[settings.tracks], pairs=covisible_partners(rec, settings.partners))
    if len(tracks) < 20:
        raise ConfigError(f"{image_dir}: only {len(tracks)} tracks linked by the reconstructed cameras; too few to "
                          "fine-tune on")
    train_tracks, held_tracks = split_tracks(tracks, settings.held_out, settings.seed)
    eval_views, eval_tracks = subset_views(views, held_tracks, settings.eval_views)
    magnification = _magnification(base, config)
    train_set = tracks_to_patch_set(views, train_tracks, magnification, seed=settings.seed)
    save_patch_set(train_set, work / "train.h5", f"camera tracks of {image_dir} (training points)", magnification)
    lap("tracks")

    before = hard_bin_metrics(eval_views, eval_tracks, base, magnification)
    lap("evaluation before")
    train_config = TrainConfig(
        train=[str(work / "train.h5")], out=str(out), init=base, loss=settings.loss,  # type: ignore[arg-type]
        steps=settings.steps, identities_per_batch=min(settings.identities_per_batch, train_set.num_identities),
        optimizer=settings.optimizer, lr=settings.lr, schedule=settings.schedule,  # type: ignore[arg-type]
        eval_every=settings.steps, checkpoint_every=max(1, settings.steps // 4), magnification=magnification,
        seed=settings.seed, wide_pairs=settings.wide_pairs, augment=settings.augment,
    )
    train(train_config, progress=progress)  # resumes from OUT's checkpoint if a run was cut off
    train_config.checkpoint_path().unlink(missing_ok=True)
    lap("training")
    after = hard_bin_metrics(eval_views, eval_tracks, out, magnification)
    lap("evaluation after")

    report = FinetuneReport(
        images=str(image_dir), base=base, out=str(out), registered=len(cameras), tracks=len(tracks),
        train_tracks=len(train_tracks), train_patches=len(train_set), heldout_tracks=len(held_tracks),
        eval_views=[v.name for v in eval_views], before=before, after=after, settings=asdict(settings),
        seconds=seconds,
    )
    (work / "finetune.json").write_text(json.dumps({**asdict(report), "minutes": report.minutes}, indent=2))
    return report


def default_base(config: PipelineConfig) -> str:
    """The weights ``matcher finetune`` starts from without ``--model``: the preset's SDGMNet weights, or the
    default preset's (models/sdgmnet-half.pt) when the preset describes with something else."""
    if config.descriptor.name == "sdgmnet":
        return config.descriptor.weights
    return load_config("default").descriptor.weights


def _magnification(base: str, config: PipelineConfig) -> float:
    """The preset's ``patches.magnification``, else the one ``base`` was trained with: the patches it describes."""
    from matcher.descriptors import load_sdgmnet
    from matcher.patches import DEFAULT_MAGNIFICATION

    if config.patches.magnification > 0:
        return float(config.patches.magnification)
    return float(load_sdgmnet(base)[1].get("magnification", DEFAULT_MAGNIFICATION))


def format_report(report: FinetuneReport) -> str:
    """The report as a small Markdown table: per bin, held-out positives, FPR95 and mAP before -> after."""
    from matcher.evaluation.report import markdown_grid

    rows = []
    for label in BIN_LABELS:
        b, a = report.before[label], report.after[label]
        rows.append([label, f"{b['positives']:,}", f"{100 * b['fpr95']:.1f}% -> {100 * a['fpr95']:.1f}%",
                     f"{b['map']:.3f} -> {a['map']:.3f}"])
    head = (f"hard-bin metrics on {report.heldout_tracks} held-out 3D points of {report.images} "
            f"(positives from the reconstructed cameras, track rule {report.settings['tracks']}, "
            f"{len(report.eval_views)} views; lower FPR95 and higher "
            f"mAP are better):")
    table = markdown_grid(["viewpoint angle", "directed pairs", "FPR95 before -> after", "mAP before -> after"], rows)
    stages = ", ".join(f"{stage} {s:.0f} s" for stage, s in report.seconds.items())
    return (f"{head}\n{table}\ntrained on {report.train_tracks} points ({report.train_patches} patches); "
            f"{report.minutes:.1f} min ({stages}); wrote {report.out}")
