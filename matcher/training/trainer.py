"""The SDGMNet trainer: any loss of :mod:`matcher.losses`, checkpoints that resume exactly, held-out FPR95.

A run is described by a :class:`TrainConfig` (a TOML file for ``matcher train CONFIG``). It trains on the
patch datasets of ``train`` (HDF5, :mod:`matcher.training.datasets`), evaluates FPR95 on verification pairs
drawn from each dataset of ``heldout``, and writes ``out`` (weights + metadata, :mod:`matcher.descriptors.weights`).

Determinism: with the same config, the batches (sampler epochs), the augmentation and the dropout masks of a
step depend only on ``seed`` and the step number, and the checkpoint holds the model, the optimiser, the loss
state and the history. A run resumed from a checkpoint therefore ends with the same weights as an
uninterrupted run (tested). Smart Mining is the exception: its neighbour index is rebuilt from the current
network when a run resumes, as it would be at its next scheduled refresh.

Miners and meta-learners are hooks (:mod:`matcher.training.hooks`): ``miner = "smart"`` adds
:class:`~matcher.training.miners.SmartMiner` (the batch source), ``otg = true`` DDTAS's
:class:`~matcher.training.otg.OnlineThresholdGenerator`; the trainer calls their hooks and knows no loss class.
Checkpoints carry :data:`CHECKPOINT_FORMAT`; one of an older format (written before miners were split from the
losses, when their state was the loss's) is refused with a message: its weights can still be exported.

Speed on CPU: the network runs in ``channels_last`` and, where the processor supports it (``bf16 = true``),
under bfloat16 autocast; losses compute in float32.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import torch

from matcher.descriptors.learned import describe_patches
from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import load_sdgmnet, save_sdgmnet
from matcher.config import Rule, above, at_least, check_settings, within
from matcher.errors import ConfigError
from matcher.losses import LossName, check_loss_options, get_loss
from matcher.patches import DEFAULT_MAGNIFICATION
from matcher.progress import progress_bar
from matcher.training.augment import augment_batch
from matcher.training.datasets import concat_patch_sets, load_patch_set
from matcher.training.homography_patches import PatchSet
from matcher.training.hooks import TrainingHook, TrainingRun
from matcher.training.metrics import verification_metrics
from matcher.training.miners import SmartMiner
from matcher.training.otg import OnlineThresholdGenerator
from matcher.training.sampler import PKSampler

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "build_hooks",
    "load_train_config",
    "train",
    "evaluate_fpr95",
    "export_checkpoint",
]

#: format of training checkpoints; 2: hook states (miner, OTG) apart from the loss's (issue 13).
CHECKPOINT_FORMAT = 2

log = logging.getLogger("matcher")


@dataclass
class TrainConfig:
    """One training run. Paths are relative to the config file's folder when loaded from TOML.

    Attributes:
        train: patch datasets to train on.
        heldout: patch datasets for held-out FPR95 (never trained on).
        out: weights file to write.
        init: weights to start from ("" = random init; a shipped name or a .pt file to fine-tune).
        loss: a name of :func:`matcher.losses.get_loss`; ``loss_options`` its keyword arguments.
        miner: "none" (the P×K sampler) or "smart" (:class:`~matcher.training.miners.SmartMiner`, whose margin is
        the loss's unless ``miner_options`` gives one); ``miner_options`` its keyword arguments.
        otg: DDTAS's online threshold generator (loss "ddtas" only); ``otg_options`` its keyword arguments
        (``mode``, ``meta_lr``, ``threshold_lr``, ``lam_bounds``).
        steps: optimiser steps; ``identities_per_batch`` P and ``views_per_identity`` K (2 = HardNet batch).
        wide_pairs: the share of identities drawn at their widest pair of views, where the training data have
        viewing rays (camera-track sets; :class:`~matcher.training.sampler.PKSampler`'s ``wide_share``).
        optimizer: "sgd" (momentum 0.9, the SDGMNet recipe) or "adam"; ``lr``, ``weight_decay``.
        schedule: "halving" (halve the LR every 10% of the run, SDGMNet), "linear" (to 0, HardNet), "constant".
        augment: the SDGMNet augmentation (:mod:`matcher.training.augment`).
        bf16: bfloat16 autocast for the network; ``channels_last`` memory format.
        eval_every / checkpoint_every: steps between held-out evaluations / checkpoints; ``eval_pairs`` pairs
        per held-out set.
        meta_val_fraction: identities of the training data kept aside as the OTG's meta-validation batches.
        magnification: written to the weights' metadata, where the pipeline reads the magnification to sample
        patches with; 0: the one the training datasets were cut with (:data:`DEFAULT_MAGNIFICATION` if they differ).
        seed: every random draw.
    """

    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    out: str = "sdgmnet.pt"
    init: str = ""
    loss: LossName = "sdgm"
    loss_options: dict[str, Any] = field(default_factory=dict)
    miner: Literal["none", "smart"] = "none"
    miner_options: dict[str, Any] = field(default_factory=dict)
    otg: bool = False
    otg_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    identities_per_batch: int = 256
    views_per_identity: int = 2
    wide_pairs: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1.0
    weight_decay: float = 1e-4
    schedule: Literal["halving", "linear", "constant"] = "halving"
    augment: bool = True
    bf16: bool = True
    channels_last: bool = True
    eval_every: int = 250
    eval_pairs: int = 20000
    checkpoint_every: int = 250
    meta_val_fraction: float = 0.1
    magnification: float = 0.0
    seed: int = 0

    rules: ClassVar[dict[str, Rule]] = {
        "steps": at_least(1), "identities_per_batch": at_least(2), "views_per_identity": at_least(2),
        "lr": above(0.0), "weight_decay": at_least(0.0), "eval_every": at_least(1), "eval_pairs": at_least(2),
        "checkpoint_every": at_least(1), "meta_val_fraction": within(0.0, 1.0, open_ends=True),
        "wide_pairs": within(0.0, 1.0),
        "magnification": (lambda v: v >= 0.0, "0 (the training data's) or a positive number of sigmas"),
    }

    def checkpoint_path(self) -> Path:
        return Path(self.out).with_suffix(".ckpt")


@dataclass
class TrainResult:
    """What a run produced: the weights file, the held-out FPR95 history and timing."""

    out: Path
    steps: int
    history: list[dict[str, float]]
    seconds: float
    resumed_from: int


def load_train_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML training config (top-level keys = :class:`TrainConfig` fields), checked like a pipeline
    configuration (:func:`matcher.config.check_settings`, and the loss's options against its constructor)."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read training config ({exc})") from None
    values.update(overrides or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    base = path.parent

    def relative(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str(base / p)

    for key in ("train", "heldout"):
        values[key] = [relative(p) for p in values.get(key, [])]
    if "out" in values:
        values["out"] = relative(values["out"])
    if values.get("init", "").endswith(".pt"):
        values["init"] = relative(values["init"])
    config = TrainConfig(**values)
    try:
        check_settings(config)
        _check_hook_options(config)
        check_loss_options(config.loss, config.loss_options)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**62)


def evaluate_fpr95(
    model: SDGMNet, patch_set: PatchSet, num_pairs: int = 20000, seed: int = 0
) -> dict[str, float]:
    """FPR95 and average precision of verification pairs (half matching) of a held-out patch set
    (:func:`~matcher.training.metrics.verification_metrics`; negatives: two identities of the same image)."""
    return verification_metrics(
        lambda rows: describe_patches(model, patch_set.patches[rows], batch_size=1024, bf16=False),
        patch_set.labels, patch_set.photo, num_pairs, seed,
    )


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "linear":
        return config.lr * (1.0 - step / config.steps)
    if config.schedule == "halving":
        return config.lr * 0.5 ** int(10 * step / config.steps)
    raise ConfigError(f"unknown schedule '{config.schedule}' (halving, linear, constant)")


def _optimizer(config: TrainConfig, model: torch.nn.Module, loss: torch.nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer '{config.optimizer}' (sgd, adam)")


#: loss options that became a miner's or the OTG's (old training configs get a pointer, not a bare TypeError).
_MOVED_OPTIONS = {
    **{k: 'miner = "smart" and [miner_options]' for k in (
        "k", "neighbours_per_seed", "hard_positive_prob", "epsilon_init", "epsilon_max", "rho_target", "gain",
        "refresh_every", "refreshes_per_run")},
    "use_otg": "otg = true", "otg_mode": "[otg_options] mode", "meta_lr": "[otg_options]",
    "threshold_lr": "[otg_options]", "lam_bounds": "[otg_options]",
}


def _check_hook_options(config: TrainConfig) -> None:
    """One-line ConfigErrors for hook and sampler settings (and for loss options that moved to a hook)."""
    moved = sorted(set(config.loss_options) & set(_MOVED_OPTIONS))
    if moved:
        raise ConfigError(f"loss_options {', '.join(moved)}: now {_MOVED_OPTIONS[moved[0]]} (miners and the OTG are "
                          "training hooks apart from the loss)")
    if config.wide_pairs > 0 and config.views_per_identity != 2:
        raise ConfigError("wide_pairs needs views_per_identity = 2 (a pair of views per identity)")
    if config.otg and config.loss != "ddtas":
        raise ConfigError(f"otg = true: the online threshold generator is DDTAS's, not for loss '{config.loss}'")
    for name, options, cls, implied in (("miner_options", config.miner_options, SmartMiner, ()),
                                        ("otg_options", config.otg_options, OnlineThresholdGenerator, ("loss",))):
        try:
            inspect.signature(cls).bind(*[None] * len(implied), **options)
        except TypeError as exc:
            raise ConfigError(f"{name}: {exc}") from None


def build_hooks(config: TrainConfig, loss: torch.nn.Module) -> list[TrainingHook]:
    """The run's hooks, in the order the trainer calls them: the miner, then the OTG."""
    hooks: list[TrainingHook] = []
    if config.miner == "smart":
        # the admission margin (squared chordal distance) is the loss's when it has a number for it (SmartMiningLoss);
        # SDGM's margin is a method of its running angle statistics, so the miner's default 0.5 holds for it.
        margin = getattr(loss, "margin", 0.5)
        margin = float(margin) if isinstance(margin, (int, float)) else 0.5
        hooks.append(SmartMiner(**{"margin": margin, **config.miner_options}))
    if config.otg:
        options = {"val_fraction": config.meta_val_fraction, **config.otg_options}
        hooks.append(OnlineThresholdGenerator(loss, **options))  # type: ignore[arg-type]
    return hooks


def _batches(config: TrainConfig, hooks: list[TrainingHook], model: SDGMNet, data: PatchSet, train_idx: np.ndarray,
             start: int) -> Iterator[np.ndarray]:
    """Index batches (into ``data``) for steps start, start+1, ...: the first hook's that supplies batches (a
    miner, which resumes its own schedule), else the P×K sampler's."""
    run = TrainingRun(model, data.patches[train_idx], data.labels[train_idx], config.steps,
                      config.identities_per_batch, config.views_per_identity, config.seed)
    for hook in hooks:
        stream = hook.batches(run)
        if stream is not None:
            for batch in stream:
                yield train_idx[batch]
            return
    sampler = PKSampler.where_rays_known(data.labels[train_idx], config.identities_per_batch,
                                         config.views_per_identity, config.seed,
                                         None if data.rays is None else data.rays[train_idx], config.wide_pairs)
    for step, batch in enumerate(sampler.batches(config.steps)):
        if step >= start:
            yield train_idx[batch]


def _metadata(config: TrainConfig, history: list[dict[str, float]], step: int,
              data_magnification: float = 0.0) -> dict[str, Any]:
    return {
        "loss": config.loss,
        "loss_options": config.loss_options,
        "miner": config.miner,
        "miner_options": config.miner_options,
        "otg": config.otg,
        "steps": step,
        "planned_steps": config.steps,
        "batch": f"{config.identities_per_batch} identities x {config.views_per_identity} views",
        "train": [Path(p).name for p in config.train],
        "heldout": [Path(p).name for p in config.heldout],
        "magnification": config.magnification or data_magnification or DEFAULT_MAGNIFICATION,
        "seed": config.seed,
        "augment": config.augment,
        "history": history,
        "init": config.init,
    }


def _load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """A training checkpoint: tensors and plain data only, loaded with ``weights_only=True`` (a checkpoint that
    needs arbitrary pickled objects, which could run code, is refused)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(f"{ckpt}: not a readable training checkpoint ({reason}); delete it to start over") from None
    if not isinstance(state, dict) or not {"model", "step", "history"} <= set(state):
        raise ConfigError(f"{ckpt}: not a training checkpoint of matcher; delete it to start over")
    return state


def _check_resumable(ckpt: Path, state: dict[str, Any]) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{ckpt}: a checkpoint of an older matcher (before miners and the OTG were split from the losses, "
            "whose state it keeps in the loss); it cannot be resumed: `matcher train CONFIG --export-checkpoint "
            "FILE` still writes its weights, or delete it to start over")


def export_checkpoint(config: TrainConfig, out: Path) -> int:
    """Write the weights of the run's latest checkpoint to ``out`` (a run cut short); returns its step."""
    ckpt = config.checkpoint_path()
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no checkpoint to export")
    state = _load_checkpoint(ckpt)
    model = SDGMNet()
    model.load_state_dict(state["model"])
    meta = _metadata(config, state["history"], int(state["step"]), state.get("magnification", 0.0))
    save_sdgmnet(model, Path(out), meta)
    return int(state["step"])


def train(
    config: TrainConfig,
    progress: bool = True,
    stop_after: int | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume) a run.

    Args:
        config: the run.
        progress: show a progress bar with the loss and the held-out FPR95.
        stop_after: stop (after checkpointing) once this many steps are done, as if the run were cut off.

    Returns:
        :class:`TrainResult`.
    """
    if not config.train:
        raise ConfigError("training config: 'train' lists no patch dataset")
    torch.manual_seed(config.seed)
    data = concat_patch_sets([load_patch_set(Path(p)) for p in config.train])
    heldout = {Path(p).stem: load_patch_set(Path(p)) for p in config.heldout}
    if config.init:
        model, _ = load_sdgmnet(config.init)
    else:
        model = SDGMNet()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss = get_loss(config.loss, **config.loss_options)
    hooks = build_hooks(config, loss)
    optimizer = _optimizer(config, model, loss)
    train_idx = np.arange(len(data))
    for hook in hooks:
        train_idx = hook.prepare(data.patches, data.labels, train_idx, config.seed, config.identities_per_batch)

    history: list[dict[str, float]] = []
    start = 0
    ckpt = config.checkpoint_path()
    if ckpt.is_file():
        state = _load_checkpoint(ckpt)
        _check_resumable(ckpt, state)
        if state.get("config") != dataclasses.asdict(config):
            raise ConfigError(f"{ckpt}: checkpoint of another configuration; delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loss.load_state_dict(state["loss"], strict=False)
        for hook, hook_state in zip(hooks, state["hooks"]):
            hook.load_state_dict(hook_state)
        history = state["history"]
        start = int(state["step"])
        log.info("resumed %s at step %d", ckpt, start)
    resumed_from = start

    def checkpoint(step: int) -> None:
        tmp = ckpt.with_name(ckpt.name + ".partial")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "loss": loss.state_dict(),
                    "hooks": [hook.state_dict() for hook in hooks], "history": history, "step": step,
                    "magnification": data.magnification}, tmp)
        tmp.replace(ckpt)

    def evaluate(step: int, last_loss: float) -> dict[str, float]:
        row: dict[str, float] = {"step": float(step), "loss": last_loss}
        for name, held in heldout.items():
            metrics = evaluate_fpr95(model, held, config.eval_pairs, seed=config.seed)
            row[f"fpr95/{name}"] = metrics["fpr95"]
            row[f"ap/{name}"] = metrics["ap"]
        if heldout:
            row["fpr95"] = float(np.mean([row[f"fpr95/{n}"] for n in heldout]))
        model.train()
        return row

    t0 = time.perf_counter()
    if start == 0 and heldout:
        history.append(evaluate(0, float("nan")))
    model.train()
    bar = progress_bar(total=config.steps, initial=start, enabled=progress, desc="train", unit="step")  # terminal only
    last_loss = float("nan")
    step = start
    for step, batch in enumerate(_batches(config, hooks, model, data, train_idx, start), start=start):
        if step >= config.steps or (stop_after is not None and step >= stop_after):
            break
        generator = torch.Generator().manual_seed(_step_seed(config.seed, step))
        torch.manual_seed(_step_seed(config.seed, step) + 1)  # dropout masks
        patches = data.patches[batch]
        if config.augment:
            patches = augment_batch(patches, config.views_per_identity, generator)
        if config.channels_last:
            patches = patches.contiguous(memory_format=torch.channels_last)
        labels = data.labels[batch]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, step)
        loss.set_progress(step / config.steps)
        for hook in hooks:
            hook.before_step(model, patches, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            descriptors = model(patches)
        value = loss(descriptors.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        for hook in hooks:
            hook.after_step()
        last_loss = float(value.detach())
        done = step + 1
        if heldout and (done % config.eval_every == 0 or done == config.steps):
            row = evaluate(done, last_loss)
            history.append(row)
            if on_eval is not None:
                on_eval(row)
            bar.set_postfix(loss=f"{last_loss:.4f}", fpr95=f"{row['fpr95']:.4f}")
        else:
            bar.set_postfix(loss=f"{last_loss:.4f}", fpr95=f"{history[-1]['fpr95']:.4f}" if history else "-")
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint(done)
        step = done
    bar.close()
    if stop_after is not None and step < config.steps:
        checkpoint(step)
        return TrainResult(Path(config.out), step, history, time.perf_counter() - t0, resumed_from)
    save_sdgmnet(model.to(memory_format=torch.contiguous_format), Path(config.out),
                 _metadata(config, history, step, data.magnification))
    return TrainResult(Path(config.out), step, history, time.perf_counter() - t0, resumed_from)
