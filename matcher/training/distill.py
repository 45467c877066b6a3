"""Distillation: a compact SDGMNet (the student) learns to reproduce the descriptors of a trained one (the teacher).

Each step draws ``P`` identities × ``K`` views from labelled patch datasets (:class:`PKSampler`); the teacher's
descriptors of those patches are the targets, so any patch gives a label for free. Without augmentation (the
default: the patches are already real DoG patches under random homographies, photometric changes and JPEG) the
teacher describes every patch once before training, through the fast inference engine
(:func:`matcher.descriptors.engines.build_engine`, bfloat16 where native); with ``augment = true`` the batch is
augmented with the SDGMNet recipe (:func:`augment_batch`) and the teacher runs on it at every step (a bfloat16
copy in torch, about a third of a step's time). The student is trained on

    L = w_d · mean_i ‖s_i − t_i‖²  +  w_r · mean_ij (s_iᵀs_j − t_iᵀt_j)²  +  w_l · HardNet(s, labels)

(s, t: unit student / teacher descriptors (B, 128); the second term keeps the teacher's in-batch similarity
structure, which is what nearest-neighbour matching uses; the third is a label loss, HardNet by default, on the
labelled views; ``label_loss`` names any loss of :mod:`matcher.losses`, ``label_loss_options`` its constructor's
keywords, e.g. ``{ m = 0.2 }`` for DDTAS). ``extra_label_loss`` / ``extra_label_loss_options`` /
``w_extra_label`` add a second label loss to the first (e.g. DDTAS beside HardNet), logged as ``extra_label``.

The same run trains on hard positives with the teacher as a regulariser (issue 11): ``init`` starts the student
from trained weights, ``mix`` gives each data file its share of every batch's identities (e.g. mostly
descriptor-free camera tracks), ``distill_sets`` limits the teacher terms to some files (e.g. the homographies,
so the teacher does not hold the camera tracks' wide-baseline positives at its own similarities), and
``w_threshold`` adds a term for one similarity threshold shared by all anchors (FPR95 uses one):

    L_thr = mean_j softplus((τ − s_aᵀs_p,j) / T)  +  mean_j softplus((max_neg s_aᵀs_n − τ) / T)

with a learned τ (initial ``threshold``) and temperature T = ``threshold_temperature``: every positive above τ,
every anchor's hardest in-batch negative below it (anchors: rows with a positive).

``wide_pairs``: in the camera-track files that store viewing rays (``matcher dataset cameras``), this share of
each batch's identities shows its two views at the widest angle instead of two at random
(:class:`~matcher.training.sampler.PKSampler`'s ``wide_share``), for more wide-baseline positives.
``validation_views = "widest"`` scores validation on those widest pairs too (where rays are known; elsewhere the
first two views), so that ``select`` picks the checkpoint best at wide baselines.

Spatial-neighbour negatives (``neighbours``, one patch file per data file or ""; built by
:mod:`matcher.training.spatial_negatives`): for every camera-track row of a batch, ``spatial_negatives`` patches
of the nearest other keypoints of its view are added as negative-only rows (a label of their own), the hard
patch benchmark's spatial negatives. HardNet then takes its hardest negative among them too
(:func:`hardnet_with_negatives`), and so does the threshold term. Validation then scores, besides random
negatives, each validation positive against the spatial neighbours of its two views. Validation: a fixed held-out slice of identities (never trained on), unaugmented; the student's
mean cosine to the teacher, the share of its mutual nearest neighbours that are the teacher's, and FPR95 of
both (:func:`matcher.training.metrics.fpr_at_recall` on matching/non-matching pairs).

Stoppable at any time: a checkpoint (student, optimiser, step, history) every ``checkpoint_every`` steps and the
weights of the best validation so far in ``out`` (a normal weights file, usable with ``--model``). ``deadline``
(UTC ``HH:MM``, the first such time after the run starts; a resumed run keeps it) ends the run by then: the cosine
learning-rate decay follows the larger of the step share and the time share to the deadline (:class:`_Progress`),
so on a busy machine the run ends with fewer steps but a fully decayed learning rate. Training stays in torch
(optionally bfloat16 autocast; channels_last).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from matcher.config import Rule, above, at_least, check_settings, within
from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import load_sdgmnet, save_sdgmnet
from matcher.errors import ConfigError
from matcher.losses import LOSSES, check_loss_options, get_loss
from matcher.training.augment import augment_batch
from matcher.training.datasets import concat_patch_sets, load_patch_set
from matcher.training.homography_patches import PatchSet
from matcher.training.sampler import PKSampler, widest_pairs

__all__ = ["DistillConfig", "load_distill_config", "distill", "distill_losses", "threshold_loss", "validate_student",
           "hardnet_with_negatives", "NeighbourIndex"]

log = logging.getLogger("matcher")

#: label losses that can take spatial-neighbour negative-only rows (a label with one row): HardNet through
#: :func:`hardnet_with_negatives`; DDTAS as it is (every other-label row is a candidate negative; rows without a
#: positive are not anchors).
NEGATIVE_ROW_LOSSES = ("hardnet", "ddtas")


@dataclass
class DistillConfig:
    """Settings of a distillation run (a TOML file; relative paths are relative to it)."""

    data: list[str]
    out: str
    teacher: str = "sdgmnet"
    channels: Literal["full", "half"] = "half"
    steps: int = 2000
    identities_per_batch: int = 256
    views_per_identity: int = 2
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 1e-4
    w_descriptor: float = 1.0
    w_relation: float = 1.0
    w_label: float = 0.1
    label_loss: str = "hardnet"
    label_loss_options: dict[str, Any] = field(default_factory=dict)
    extra_label_loss: str | None = None
    extra_label_loss_options: dict[str, Any] = field(default_factory=dict)
    w_extra_label: float = 0.0
    init: str | None = None
    mix: list[float] | None = None
    distill_sets: list[int] | None = None
    validation_sets: list[int] | None = None
    select: Literal["cos", "fpr95"] = "cos"
    validation_views: Literal["first", "widest"] = "first"
    neighbours: list[str] | None = None
    spatial_negatives: int = 0
    wide_pairs: float = 0.0
    w_threshold: float = 0.0
    threshold: float = 0.5
    threshold_temperature: float = 0.05
    drop_rate: float = 0.1
    augment: bool = False
    bf16: bool = False
    channels_last: bool = True
    validation_identities: int = 2000
    eval_every: int = 100
    checkpoint_every: int = 50
    deadline: str | None = None
    seed: int = 0
    magnification: float = 6.0
    threads: int = 1
    log_file: str | None = None
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    rules: ClassVar[dict[str, Rule]] = {
        "steps": at_least(1), "identities_per_batch": at_least(2), "views_per_identity": at_least(2),
        "lr": above(0.0), "warmup": at_least(0), "weight_decay": at_least(0.0), "w_descriptor": at_least(0.0),
        "w_relation": at_least(0.0), "w_label": at_least(0.0), "w_extra_label": at_least(0.0),
        "validation_identities": at_least(2),
        "eval_every": at_least(1), "checkpoint_every": at_least(1), "magnification": above(0.0),
        "threads": at_least(1), "w_threshold": at_least(0.0), "threshold_temperature": above(0.0),
        "spatial_negatives": at_least(0), "wide_pairs": within(0.0, 1.0),
    }

    @property
    def checkpoint_path(self) -> Path:
        """Where the resumable state lives: ``out`` + ``.ckpt``."""
        return Path(self.out).with_suffix(".ckpt")


def load_distill_config(path: Path, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Read a TOML distillation config; relative paths are taken relative to the file's folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read distillation config ({exc})") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(DistillConfig)} - {"history"}
    unknown = set(raw) - known
    if unknown or "data" not in raw or "out" not in raw:
        what = f"unknown keys {', '.join(sorted(unknown))}" if unknown else "needs both data and out"
        raise ConfigError(f"{path}: {what}; known: {', '.join(sorted(known))}")
    base = path.parent

    def relative(p: str) -> str:
        return str(p) if Path(p).is_absolute() else str(base / p)

    raw["data"] = [relative(p) for p in raw["data"]]
    raw["out"] = relative(raw["out"])
    if raw.get("neighbours"):
        raw["neighbours"] = [relative(p) if p else "" for p in raw["neighbours"]]
    if raw.get("teacher", "sdgmnet").endswith(".pt"):
        raw["teacher"] = relative(raw["teacher"])
    if str(raw.get("init") or "").endswith(".pt"):
        raw["init"] = relative(raw["init"])
    if raw.get("log_file"):
        raw["log_file"] = relative(raw["log_file"])
    config = DistillConfig(**raw)
    try:
        check_settings(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    n = len(config.data)
    if config.mix is not None and (len(config.mix) != n or min(config.mix) < 0 or sum(config.mix) <= 0):
        raise ConfigError(f"{path}: mix needs one non-negative share per data file ({n}), not all zero")
    if config.neighbours is not None and len(config.neighbours) != n:
        raise ConfigError(f"{path}: neighbours needs one patch file (or \"\") per data file ({n})")
    if config.wide_pairs > 0 and config.views_per_identity != 2:
        raise ConfigError(f"{path}: wide_pairs needs views_per_identity = 2 (a pair of views per identity)")
    label_terms = [("label_loss", config.label_loss, config.label_loss_options)]
    if config.extra_label_loss is not None:
        label_terms.append(("extra_label_loss", config.extra_label_loss, config.extra_label_loss_options))
    elif config.extra_label_loss_options or config.w_extra_label > 0:
        raise ConfigError(f"{path}: extra_label_loss_options / w_extra_label need extra_label_loss")
    for key, name, options in label_terms:
        if name not in LOSSES:
            raise ConfigError(f"{path}: unknown {key} {name!r}; known: {', '.join(sorted(LOSSES))}")
        try:
            check_loss_options(name, options)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if config.spatial_negatives > 0 and (not config.neighbours or name not in NEGATIVE_ROW_LOSSES):
            raise ConfigError(f"{path}: spatial_negatives needs neighbours and {key} in "
                              f"{', '.join(NEGATIVE_ROW_LOSSES)}")
    for key in ("distill_sets", "validation_sets"):
        value = getattr(config, key)
        if value is not None and (not value or not all(0 <= i < n for i in value)):
            raise ConfigError(f"{path}: {key} must list data file indices in 0..{n - 1}")
    return config


def threshold_loss(descriptors: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor, temperature: float
                   ) -> torch.Tensor:
    """One similarity threshold for all anchors: positives above ``tau``, each anchor's hardest negative below.

    Args:
        descriptors: (B, D) unit rows, identity-major (the views of one identity consecutive). labels: (B,).
        tau: scalar threshold (learned). temperature: softness T of the two softplus terms.
    """
    sim = descriptors @ descriptors.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = sim[same & ~eye]
    anchors = (same & ~eye).any(1)  # negative-only rows (a label of their own) are not anchors
    neg = sim.masked_fill(same, -2.0).max(1).values[anchors]
    return F.softplus((tau - pos) / temperature).mean() + F.softplus((neg - tau) / temperature).mean()


def hardnet_with_negatives(descriptors: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, eps: float = 1e-6,
                           duplicate_distance: float = 0.008) -> torch.Tensor:
    """HardNet (anchor swap, :class:`~matcher.losses.hardnet.HardNetLoss`) whose hardest negative of a pair may
    also be any negative-only row (a label with one row, e.g. a spatial neighbour), against either of its views.

    Args:
        descriptors: (B, D) unit rows. labels: (B,); pairs by :func:`~matcher.losses.base.pair_indices`.
    """
    from matcher.losses.base import hardest_negatives, pair_indices, zero_loss

    idx_a, idx_p = pair_indices(labels)
    if idx_a.numel() == 0:
        return zero_loss(descriptors)
    sim = descriptors @ descriptors.T
    guard = 1.0 - 0.5 * duplicate_distance**2
    s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, "cross", guard)
    s_n = torch.where(valid, s_n, torch.full_like(s_n, -2.0))
    counts = torch.bincount(labels - labels.min())[labels - labels.min()]
    single = torch.nonzero(counts == 1).reshape(-1)
    if single.numel():
        cand = torch.maximum(sim[idx_a][:, single], sim[idx_p][:, single])  # (N, S)
        cand = cand.masked_fill(cand >= guard, -2.0)
        s_n = torch.maximum(s_n, cand.max(1).values)
    keep = s_n > -2.0
    if not bool(keep.any()):
        return zero_loss(descriptors)
    s_p = (descriptors[idx_a] * descriptors[idx_p]).sum(1)[keep]
    d_p = torch.sqrt((2.0 - 2.0 * s_p).clamp_min(0.0) + eps)
    d_n = torch.sqrt((2.0 - 2.0 * s_n[keep]).clamp_min(0.0) + eps)
    return torch.relu(margin + d_p - d_n).mean()


def _label_term(name: str, loss: torch.nn.Module, student: torch.Tensor, labels: torch.Tensor,
                config: DistillConfig) -> torch.Tensor:
    """One label loss of a batch; with spatial-neighbour rows, HardNet through :func:`hardnet_with_negatives` and
    any other loss rescaled to its anchors' mean. student: (B, 128) unit rows. labels: (B,)."""
    if config.spatial_negatives > 0 and name == "hardnet":
        return hardnet_with_negatives(student, labels)
    lab = loss(student, labels)
    anchors = int((torch.bincount(labels - labels.min())[labels - labels.min()] > 1).sum())
    if 0 < anchors < len(labels):  # DDTAS averages over all B rows; negative-only rows are not anchors
        lab = lab * (len(labels) / anchors)  # the anchors' mean, the scale of a batch without them
    return lab


def _loss_statistics(prefix: str, name: str | None, loss: torch.nn.Module | None) -> dict[str, float]:
    """A label loss's running statistics for the log, keyed ``{prefix}{name}_{key}`` (none for HardNet, which
    keeps none, or for an absent loss)."""
    if loss is None or name is None or name == "hardnet":
        return {}
    return {f"{prefix}{name}_{k}": v for k, v in loss.statistics().items()}


def distill_losses(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, label_loss: torch.nn.Module,
                   config: DistillConfig, distill_rows: torch.Tensor | None = None,
                   tau: torch.Tensor | None = None, extra_label_loss: torch.nn.Module | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """The distillation loss of one batch.

    Args:
        student: (B, 128) unit rows (with gradient). teacher: (B, 128) unit rows (targets). labels: (B,) int64.
        distill_rows: (B,) bool, the rows the teacher terms apply to (None: all).
        tau: the learned threshold of :func:`threshold_loss` (used when ``config.w_threshold`` > 0).
        extra_label_loss: the module of ``config.extra_label_loss`` (a second label term, weight
            ``config.w_extra_label``; logged as ``extra_label``).

    Returns:
        The scalar loss and its terms as floats.
    """
    s, t = (student, teacher) if distill_rows is None else (student[distill_rows], teacher[distill_rows])
    if len(s):
        d = (s - t).pow(2).sum(1).mean()
        r = (s @ s.T - t @ t.T).pow(2).mean()
    else:
        d = r = student.sum() * 0.0
    total = config.w_descriptor * d + config.w_relation * r
    terms = {"descriptor": float(d.detach()), "relation": float(r.detach())}
    if config.w_threshold > 0 and tau is not None:
        thr = threshold_loss(student, labels, tau, config.threshold_temperature)
        total = total + config.w_threshold * thr
        terms["threshold"] = float(thr.detach())
        terms["tau"] = float(tau.detach())
    if config.w_label > 0:
        lab = _label_term(config.label_loss, label_loss, student, labels, config)
        total = total + config.w_label * lab
        terms["label"] = float(lab.detach())
    if config.w_extra_label > 0 and extra_label_loss is not None:
        assert config.extra_label_loss is not None  # the module is built from it
        extra = _label_term(config.extra_label_loss, extra_label_loss, student, labels, config)
        total = total + config.w_extra_label * extra
        terms["extra_label"] = float(extra.detach())
    terms["loss"] = float(total.detach())
    return total, terms


def _describe(model: SDGMNet, patches: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(patches[i : i + batch].contiguous()) for i in range(0, len(patches), batch)])


def _fpr95(desc: torch.Tensor, a: np.ndarray, b: np.ndarray, same: np.ndarray) -> float:
    from matcher.training.metrics import fpr_at_recall

    sim = (desc[a] * desc[b]).sum(1).numpy()
    return float(fpr_at_recall(same, sim, 0.95))


def validate_student(student: SDGMNet, teacher_desc: torch.Tensor, val: PatchSet, pairs: tuple,
                     views: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Agreement of the student with the teacher on the held-out slice (unaugmented patches).

    ``teacher_desc``: (N, 128) teacher descriptors of ``val.patches``; ``pairs``: (a, b, same) arrays of pair
    indices into ``val`` with their match labels (for FPR95); ``views``: the two views (M,), (M,) of each identity
    compared by mutual nearest neighbours (default: :func:`_two_views`).
    """
    s = _describe(student, val.patches)
    cos = (s * teacher_desc).sum(1)
    # mutual nearest neighbours between view 0 and view 1 of each identity, student vs teacher
    first, second = _two_views(val.labels) if views is None else views
    nn_s = _mutual_nn(s[first], s[second])
    nn_t = _mutual_nn(teacher_desc[first], teacher_desc[second])
    agree = float((nn_s == nn_t)[nn_t >= 0].float().mean()) if bool((nn_t >= 0).any()) else float("nan")
    a, b, same = pairs
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "mnn_agreement": agree,
            "fpr95_student": _fpr95(s, a, b, same), "fpr95_teacher": _fpr95(teacher_desc, a, b, same),
            "mnn_correct_student": float((nn_s == torch.arange(len(first))).float().mean()),
            "mnn_correct_teacher": float((nn_t == torch.arange(len(first))).float().mean())}


def _two_views(labels: torch.Tensor, rays: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of two views of every identity with at least two: (M,), (M,). The first two in row order, or, with
    ``rays`` (N, 3), the two at the widest angle wherever all the identity's rays are known."""
    lab = labels.numpy()
    order = np.argsort(lab, kind="stable")
    uniq, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    keep = counts >= 2
    first, second = order[starts[keep]], order[starts[keep] + 1]
    if rays is not None:
        groups = [m for m, k in zip(np.split(order, starts[1:]), keep) if k]
        widest = widest_pairs(groups, rays.numpy().astype(np.float64))
        known = widest[:, 0] >= 0
        first, second = np.where(known, widest[:, 0], first), np.where(known, widest[:, 1], second)
    return torch.from_numpy(first), torch.from_numpy(second)


def _mutual_nn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """For each row of x (M, D), its mutual nearest neighbour in y (M, D), or -1: (M,) int64."""
    sim = x @ y.T
    fwd, bwd = sim.argmax(1), sim.argmax(0)
    out = fwd.clone()
    out[bwd[fwd] != torch.arange(len(x))] = -1
    return out


def _split(data: PatchSet, n_val: int, seed: int, eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of training and validation patches: ``n_val`` whole identities held out (drawn from the rows
    ``eligible`` (N,) bool, default all)."""
    ids = np.unique(data.labels.numpy() if eligible is None else data.labels.numpy()[eligible])
    rng = np.random.default_rng([seed, 7])
    val_ids = rng.choice(ids, min(n_val, len(ids) // 10), replace=False)
    is_val = np.isin(data.labels.numpy(), val_ids)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _val_pairs(labels: torch.Tensor, seed: int, views: tuple[torch.Tensor, torch.Tensor], n: int = 20000
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half matching pairs (the two ``views`` of an identity), half random non-matching pairs: a, b, same (bool)."""
    rng = np.random.default_rng([seed, 11])
    first, second = (t.numpy() for t in views)
    k = min(n // 2, len(first))
    pick = rng.choice(len(first), k, replace=False)
    lab = labels.numpy()
    na, nb = rng.integers(0, len(lab), n), rng.integers(0, len(lab), n)
    diff = lab[na] != lab[nb]
    na, nb = na[diff][:k], nb[diff][:k]
    a = np.concatenate([first[pick], na])
    b = np.concatenate([second[pick], nb])
    same = np.concatenate([np.ones(k, bool), np.zeros(len(na), bool)])
    return a, b, same


class NeighbourIndex:
    """Neighbour rows (:mod:`matcher.training.spatial_negatives`) of each observation, found by its (label, photo).

    Args:
        labels, photo: (M,) the observation each neighbour row belongs to, in the labels and photo indices of the
            concatenated training data.
    """

    def __init__(self, labels: np.ndarray, photo: np.ndarray) -> None:
        self.n_photos = int(photo.max()) + 1 if photo.size else 1
        key = labels.astype(np.int64) * self.n_photos + photo.astype(np.int64)
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    def lookup(self, labels: np.ndarray, photo: np.ndarray, per_row: int | None = None,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour rows of the observations (labels, photo) (R,): (M,) rows and (M,) the observation (0..R-1)
        each belongs to; at most ``per_row`` per observation, drawn with ``rng`` (None: all, in order)."""
        q = labels.astype(np.int64) * self.n_photos + photo.astype(np.int64)
        q = np.where(photo < self.n_photos, q, -1)
        lo, hi = np.searchsorted(self.keys, q, "left"), np.searchsorted(self.keys, q, "right")
        rows, owner = [], []
        for i in np.flatnonzero(hi > lo):
            n = int(hi[i] - lo[i])
            take = np.arange(n) if per_row is None or per_row >= n else (rng or np.random.default_rng(0)).choice(
                n, per_row, replace=False)
            rows.append(self.order[lo[i] + take])
            owner.append(np.full(take.size, i))
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows), np.concatenate(owner)


def _load_neighbours(config: DistillConfig, label_offsets: list[int], photo_offsets: list[int]
                     ) -> tuple[torch.Tensor, NeighbourIndex] | None:
    """The neighbour patches of all data files, concatenated (M, 1, 32, 32), and their index (labels and photos
    shifted as :func:`concat_patch_sets` shifts the data's)."""
    if not config.neighbours or not any(config.neighbours):
        return None
    patches, labels, photo = [], [], []
    for k, path in enumerate(config.neighbours):
        if not path:
            continue
        nb = load_patch_set(Path(path))
        patches.append(nb.patches)
        labels.append(nb.labels.numpy() + label_offsets[k])
        photo.append(nb.photo.numpy() + photo_offsets[k])
    return torch.cat(patches), NeighbourIndex(np.concatenate(labels), np.concatenate(photo))


def _spatial_validation(val: PatchSet, pairs: tuple, views: tuple[torch.Tensor, torch.Tensor],
                        nb_patches: torch.Tensor, index: NeighbourIndex) -> tuple[PatchSet, tuple]:
    """``val`` with the neighbour patches of its rows appended (a label of their own each), and ``pairs`` with,
    per positive (first, second of ``views``), the negatives (first, neighbour of second) and (second, neighbour
    of first)."""
    rows, owner = index.lookup(val.labels.numpy(), val.photo.numpy())
    n = len(val)
    ext = PatchSet(torch.cat([val.patches, nb_patches[rows]]),
                   torch.cat([val.labels, -1 - torch.arange(rows.size, dtype=val.labels.dtype)]),
                   torch.cat([val.photo, val.photo[owner]]), torch.cat([val.view, val.view[owner]]), val.names)
    first, second = (t.numpy() for t in views)
    partner = np.full(n, -1)
    partner[first], partner[second] = second, first
    nb_row = n + np.arange(rows.size)
    anchor = partner[owner]
    ok = anchor >= 0
    a, b, same = pairs
    return ext, (np.concatenate([a, anchor[ok]]), np.concatenate([b, nb_row[ok]]),
                 np.concatenate([same, np.zeros(int(ok.sum()), bool)]))


def _lr_at(config: DistillConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay over ``progress`` in [0, 1]."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _deadline_time(deadline: str | None, now: dt.datetime) -> dt.datetime | None:
    """The first UTC ``HH:MM`` after ``now`` (so a run started at 23:30 with ``01:30`` gets two hours), or None."""
    if not deadline:
        return None
    hh, mm = (int(x) for x in deadline.split(":"))
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return end if end > now else end + dt.timedelta(days=1)


class _Progress:
    """Share of the run done: the larger of steps done / ``steps`` and, with a deadline, the share of the time
    from this sitting's start (resumed at ``resumed_progress``) to the deadline, so the learning-rate decay
    ends when the run must end, however fast the (shared) machine is."""

    def __init__(self, config: DistillConfig, start: int, resumed_progress: float,
                 deadline_at: dt.datetime | None = None) -> None:
        """``deadline_at``: the deadline a resumed run fixed when it first started (its checkpoint keeps it)."""
        self.steps, self.start_progress = config.steps, resumed_progress
        self.t0 = dt.datetime.now(dt.timezone.utc)
        self.end = _deadline_time(config.deadline, self.t0) if deadline_at is None else deadline_at
        if self.end is not None and self.end <= self.t0:
            self.end = self.t0  # a resumed run already past its deadline stops before its first step

    def __call__(self, step: int) -> float:
        p = step / self.steps
        if self.end is not None:
            now = dt.datetime.now(dt.timezone.utc)
            total = (self.end - self.t0).total_seconds()
            share = 1.0 if total <= 0 else (now - self.t0).total_seconds() / total
            p = max(p, self.start_progress + (1 - self.start_progress) * share)
        return min(1.0, p)


def _teacher_targets(teacher: SDGMNet, data: PatchSet, sizes: list[int], wanted: list[int], config: DistillConfig,
                     note) -> torch.Tensor:
    """Teacher descriptors (N, 128) of the patches of the data files ``wanted`` (zero rows for the others),
    cached per data file beside ``out`` (keyed by the file, its patch count and the teacher's weights)."""
    from matcher.descriptors.engines import build_engine, weights_digest

    digest = weights_digest(teacher)
    targets = torch.zeros((len(data), 128))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    engine = None
    for k in wanted:
        path = Path(config.data[k])
        cache = Path(config.out).parent / f"{path.stem}.{digest[:12]}.targets.pt"
        key = json.dumps({"data": str(path.resolve()), "n": int(sizes[k]), "teacher": digest})
        rows = slice(int(offsets[k]), int(offsets[k + 1]))
        if cache.is_file():
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                targets[rows] = blob["targets"]
                continue
        t0 = time.time()
        engine = engine or build_engine(teacher, "auto", "auto", 256, "cpu")
        targets[rows] = engine(data.patches[rows])
        note({"event": "teacher targets", "file": str(path), "engine": engine.name, "precision": engine.precision,
              "patches": int(sizes[k]), "seconds": time.time() - t0})
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "targets": targets[rows].clone()}, cache)
    return targets


def distill(config: DistillConfig, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) a distillation; returns the best validation record. Writes ``config.out`` (best weights)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.log_file:
        Path(config.log_file).parent.mkdir(parents=True, exist_ok=True)
    logf = open(config.log_file, "a") if config.log_file else None

    def note(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        log.info(line)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    teacher, teacher_meta = load_sdgmnet(config.teacher)
    teacher_bf16 = SDGMNet(init_weights=False, channels=teacher.channels)
    teacher_bf16.load_state_dict(teacher.state_dict())
    teacher_bf16 = teacher_bf16.eval().to(torch.bfloat16 if config.bf16 else torch.float32,
                                          memory_format=torch.channels_last)
    sets = [load_patch_set(Path(p)) for p in config.data]
    data = concat_patch_sets(sets)
    sizes = [len(x) for x in sets]
    label_offsets = np.concatenate([[0], np.cumsum([int(x.labels.max()) + 1 if len(x) else 0 for x in sets])])
    photo_offsets = np.concatenate([[0], np.cumsum([len(x.names) for x in sets])])
    neighbours = _load_neighbours(config, label_offsets.tolist(), photo_offsets.tolist())
    source = torch.from_numpy(np.repeat(np.arange(len(sets)), sizes))
    del sets
    wanted = list(range(len(sizes))) if config.distill_sets is None else sorted(set(config.distill_sets))
    targets = None if config.augment else _teacher_targets(teacher, data, sizes, wanted, config, note)
    eligible = None if config.validation_sets is None else np.isin(source.numpy(), config.validation_sets)
    train_idx, val_idx = _split(data, config.validation_identities, config.seed, eligible)
    distill_mask = None if config.distill_sets is None else torch.isin(source, torch.tensor(config.distill_sets))
    val = PatchSet(data.patches[val_idx], data.labels[val_idx], data.photo[val_idx], data.view[val_idx], data.names)
    val_views = _two_views(val.labels, data.rays[val_idx] if config.validation_views == "widest"
                           and data.rays is not None else None)
    pairs = _val_pairs(val.labels, config.seed, val_views)
    if neighbours is not None:
        val, pairs = _spatial_validation(val, pairs, val_views, *neighbours)
    teacher_val = _describe(teacher, val.patches)

    student = SDGMNet(drop_rate=config.drop_rate, channels=config.channels)
    if config.init:
        init, _ = load_sdgmnet(config.init)
        student.load_state_dict(init.state_dict())
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    label_loss = get_loss(config.label_loss, **config.label_loss_options)
    extra_label_loss = (get_loss(config.extra_label_loss, **config.extra_label_loss_options)
                        if config.extra_label_loss is not None else None)
    tau = torch.nn.Parameter(torch.tensor(float(config.threshold)))
    opt = torch.optim.AdamW([{"params": student.parameters()}, {"params": [tau], "weight_decay": 0.0}],
                            lr=config.lr, weight_decay=config.weight_decay)
    start, history, best, resumed_progress, deadline_at = 0, [], None, 0.0, None
    ckpt = config.checkpoint_path
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        student.load_state_dict(state["student"])
        if "tau" in state:
            tau.data.fill_(float(state["tau"]))
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), json.loads(state["history"])
        resumed_progress = float(state.get("progress", start / config.steps))
        best = json.loads(state["best"]) if state.get("best") else None
        if config.deadline and state.get("deadline") == config.deadline and state.get("deadline_at"):
            deadline_at = dt.datetime.fromisoformat(state["deadline_at"])
        note({"event": "resumed", "step": start})
    note({"event": "start", "train_patches": int(len(train_idx)), "val_patches": int(len(val_idx)),
          "neighbour_patches": 0 if neighbours is None else len(neighbours[0]),
          "val_pairs": int(len(pairs[0])), "val_negatives": int((~pairs[2]).sum()),
          "student_flops": student.flops_per_patch(), "teacher_flops": teacher.flops_per_patch(),
          "config": {k: v for k, v in asdict(config).items() if k != "history"}})

    batches = _batches(data.labels, source, train_idx, config, data.rays)
    ckpt.parent.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(step: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(), "step": step, "tau": float(tau.detach()),
                    "progress": progress(step), "deadline": config.deadline or "",
                    "deadline_at": progress.end.isoformat() if progress.end is not None else "",
                    "history": json.dumps(history), "best": json.dumps(best) if best else ""}, tmp)
        tmp.replace(ckpt)

    def evaluate(step: int) -> None:
        nonlocal best
        record = {"step": step, **validate_student(student, teacher_val, val, pairs, val_views)}
        history.append(record)
        note(record)
        better = (record["cos_mean"] > best["cos_mean"] if config.select == "cos"
                  else record["fpr95_student"] <= best["fpr95_student"]) if best is not None else True
        if better:
            best = record
            meta = {
                "magnification": float(teacher_meta.get("magnification", config.magnification)),
                "distilled_from": str(config.teacher), "teacher_meta_loss": teacher_meta.get("loss"),
                "data": [Path(p).name for p in config.data], "step": step, "steps_planned": config.steps,
                "loss": f"distill: {config.w_descriptor}*L2 + {config.w_relation}*relation + "
                        f"{config.w_label}*{config.label_loss} + {config.w_threshold}*threshold"
                        + (f" + {config.w_extra_label}*{config.extra_label_loss}"
                           if extra_label_loss is not None else ""),
                "init": config.init, "mix": config.mix, "distill_sets": config.distill_sets,
                "lr": config.lr, "identities_per_batch": config.identities_per_batch, "seed": config.seed,
                "validation": record,
            }
            save_sdgmnet(student, Path(config.out), meta)
        student.train()

    gen = torch.Generator().manual_seed(config.seed * 1000 + start)
    progress = _Progress(config, start, resumed_progress, deadline_at)
    t0, done = time.time(), start
    for step, idx in enumerate(batches):
        if step < start:
            continue
        p = progress(step)
        if p >= 1.0:
            note({"event": "end of schedule", "step": step})
            break
        student.train()
        for loss_module in (label_loss, extra_label_loss):
            if loss_module is not None:
                loss_module.set_progress(p)  # DDTAS's false-negative guard starts at a share of the run
        lr = _lr_at(config, step, p)
        for group in opt.param_groups:
            group["lr"] = lr
        patches = data.patches[idx]
        if config.augment:
            patches = augment_batch(patches, config.views_per_identity, gen)
        labels = data.labels[idx]
        distill_rows = None if distill_mask is None else distill_mask[idx]
        nb_rows = np.zeros(0, np.int64)
        if neighbours is not None and config.spatial_negatives > 0:
            nb_rows, _ = neighbours[1].lookup(labels.numpy(), data.photo[idx].numpy(), config.spatial_negatives,
                                              np.random.default_rng([config.seed, 13, step]))
            patches = torch.cat([patches, neighbours[0][nb_rows]])
            labels = torch.cat([labels, -1 - torch.arange(nb_rows.size, dtype=labels.dtype)])
            base = torch.ones(len(idx), dtype=torch.bool) if distill_rows is None else distill_rows
            distill_rows = torch.cat([base, torch.zeros(nb_rows.size, dtype=torch.bool)])  # no teacher terms
        if config.channels_last:
            patches = patches.contiguous(memory_format=torch.channels_last)
        if targets is None:
            with torch.inference_mode():
                target = teacher_bf16(patches.to(teacher_bf16.features[0][0].weight.dtype)).float()
            target = target.clone()
        else:
            target = torch.cat([targets[idx], torch.zeros((nb_rows.size, 128))])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            out = student(patches)
        loss, terms = distill_losses(F.normalize(out.float(), dim=1), target, labels, label_loss, config,
                                     distill_rows, tau, extra_label_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            note({"step": step, "lr": lr, "rows": int(len(labels)), "progress": round(p, 4), "s_per_step": (time.time() - t0) / max(1, step - start + 1),
                  **terms, **_loss_statistics("", config.label_loss, label_loss),
                  **_loss_statistics("extra_", config.extra_label_loss, extra_label_loss)})
        if (step + 1) % config.eval_every == 0:
            evaluate(step + 1)
        if (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(step + 1)
        done = step + 1
    if not history or history[-1]["step"] != done:
        evaluate(done)
    save_checkpoint(done)
    note({"event": "end", "step": done, "best": best, "seconds": time.time() - t0})
    if logf:
        logf.close()
    return best or {}


def _batches(labels: torch.Tensor, source: torch.Tensor, train_idx: np.ndarray, config: DistillConfig,
             rays: torch.Tensor | None = None):
    """Row indices of each step's batch: P identities × K views, drawn from all training rows, or with ``mix``
    from each data file in proportion to its share (a :class:`PKSampler` per file, concatenated); ``rays``
    (N, 3) or None, for ``wide_pairs``."""

    def sampler_of(rows: np.ndarray, count: int, seed: int) -> PKSampler:
        return PKSampler.where_rays_known(labels[rows], count, config.views_per_identity, seed,
                                          None if rays is None else rays[rows], config.wide_pairs)

    if config.mix is None:
        sampler = sampler_of(train_idx, config.identities_per_batch, config.seed)
        return (train_idx[b] for b in sampler.batches(config.steps))
    shares = np.asarray(config.mix, np.float64) / sum(config.mix)
    counts = np.floor(shares * config.identities_per_batch).astype(int)
    counts[np.argmax(shares)] += config.identities_per_batch - counts.sum()
    streams = []
    src = source.numpy()[train_idx]
    for k, count in enumerate(counts):
        if count > 0:
            rows = train_idx[src == k]
            sampler = sampler_of(rows, int(count), config.seed * 100 + k)
            streams.append((rows, sampler.batches(config.steps)))
    return (np.concatenate([rows[next(it)] for rows, it in streams]) for _ in range(config.steps))


def main(argv: list[str] | None = None) -> None:
    """``python -m matcher.training.distill CONFIG.toml [--steps N] [--deadline HH:MM] [--fresh]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m matcher.training.distill", description=main.__doc__)
    parser.add_argument("config", type=Path, help="distillation config (TOML)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--deadline", help="stop at this UTC time (HH:MM, the next one after the start; a resumed "
                                           "run keeps it), keeping the best weights")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's, 1)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = load_distill_config(args.config, {"steps": args.steps, "deadline": args.deadline,
                                                   "threads": args.threads})
    except ConfigError as exc:
        parser.exit(exc.exit_code, f"error: {exc}\n")
    best = distill(config, resume=not args.fresh)
    print(json.dumps(best))


if __name__ == "__main__":
    main()
