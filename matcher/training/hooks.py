"""What the trainer calls around its steps, so that it needs to know no loss, miner or meta-learner by its class.

A hook is an ``nn.Module`` (its buffers are its state: saved in training checkpoints, restored on resume). The
trainer (:func:`matcher.training.trainer.train`) calls, for every hook of the run:

* :meth:`TrainingHook.prepare` once, with the training data: a hook may keep identities aside for itself (the
  online threshold generator's meta-validation batches) and returns the indices left for training;
* :meth:`TrainingHook.batches` once: a hook may supply the run's batches (a miner); the first hook that does is
  the batch source, else the trainer's P×K sampler is;
* :meth:`TrainingHook.before_step` before each step's forward pass, :meth:`TrainingHook.after_step` after its
  optimiser step;
* :meth:`TrainingHook.statistics` for logging.

Hooks: :class:`matcher.training.miners.SmartMiner` (global mining, Smart Mining's batch source) and
:class:`matcher.training.otg.OnlineThresholdGenerator` (DDTAS's meta step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["TrainingHook", "TrainingRun"]


@dataclass
class TrainingRun:
    """What a hook may read of the run: the network, the training patches (N, 1, 32, 32) and labels (N,) it
    trains on (after :meth:`TrainingHook.prepare`), the batch shape and the seed."""

    model: nn.Module
    patches: torch.Tensor
    labels: torch.Tensor
    steps: int
    identities_per_batch: int
    views_per_identity: int
    seed: int


class TrainingHook(nn.Module):
    """Base class: every call does nothing."""

    def prepare(
        self, patches: torch.Tensor, labels: torch.Tensor, train_idx: np.ndarray, seed: int, identities_per_batch: int
    ) -> np.ndarray:
        """The training data, patches (N, 1, 32, 32) and labels (N,); returns the indices (into them) left for
        training (``train_idx``, or fewer when the hook keeps some aside)."""
        return train_idx

    def batches(self, run: TrainingRun) -> Iterator[np.ndarray] | None:
        """Endless index batches into ``run.patches`` for the steps from 0 on, or None (not a batch source)."""
        return None

    def before_step(self, model: nn.Module, patches: torch.Tensor, labels: torch.Tensor) -> None:
        """Before the step's forward pass on ``patches`` (B, 1, 32, 32) with ``labels`` (B,)."""

    def after_step(self) -> None:
        """After the step's optimiser step."""

    def statistics(self) -> dict[str, float]:
        """Current values for logging."""
        return {}
