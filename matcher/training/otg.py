"""DDTAS's online threshold generator (OTG): a meta step before each training step, as a trainer hook.

Jiang et al., "Dual Dynamic Threshold Adjustment Strategy for Deep Metric Learning" (ACM TOMM 2024), following the
released code (``trainer_DDTAS.py``) where it exists; the loss is :class:`matcher.losses.DDTASLoss`. It costs ~3
forward and 2 backward passes per step. Before ``loss(model(train_patches), train_labels)`` the trainer calls
:meth:`OnlineThresholdGenerator.before_step`, which draws a validation batch (P×K from training identities kept
aside by :meth:`~OnlineThresholdGenerator.prepare`) and runs :meth:`~OnlineThresholdGenerator.meta_step`:

* ``mode="pair_weights"`` (the released code's behaviour, verified): per-pair weights ε (zeros) on the pairs mined
  in the training batch; one virtual SGD step θ' = θ − η∇_θ Σ ε_k ℓ_k (``create_graph``); the unweighted
  validation loss at θ'; g = ∂L_val/∂ε; w = relu(−g)/sum/max (:func:`matcher.losses.ddtas.otg_normalise`). The
  loss's next call on a batch with the same labels reuses that call's mined pairs with weights w (one use,
  :meth:`DDTASLoss.weight_next_call`). Since ε = 0, θ' = θ and η only scales g, which the normalisation removes.
* ``mode="threshold"`` [PROPOSAL methods.md §4.5, on λ]: the paper says the OTG outputs a *threshold* by one
  gradient step, which the code does not show. Here the meta-variable is the loss threshold λ (the mining
  tolerance m is not differentiable): λ ← clip(λ − η_λ ∂L_val(θ'(λ))/∂λ, ``lam_bounds``) with
  θ'(λ) = θ − η∇_θ L_tr(θ; λ) and a validation loss at the current λ (held fixed).

The model is run functionally (``torch.func.functional_call``) with copies of its buffers, so the meta step
changes neither parameters nor BatchNorm statistics. DDTAS freezes BN throughout; SDGMNet trains BN, so the model
is run in its own mode. Defaults: ``meta_lr`` η = 1.0, ``threshold_lr`` η_λ = 0.01, ``lam_bounds`` = (0.0, 0.9),
``val_fraction`` = 0.1 of the training identities kept aside, validation batches of P/8 identities × 2 views.
"""

from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from matcher.losses.ddtas import DDTASLoss, otg_normalise
from matcher.training.hooks import TrainingHook
from matcher.training.sampler import PKSampler

__all__ = ["OTGMode", "OnlineThresholdGenerator"]

OTGMode = Literal["pair_weights", "threshold"]


class OnlineThresholdGenerator(TrainingHook):
    """The OTG of DDTAS for ``loss`` (a :class:`DDTASLoss`); see the module docstring.

    Statistics after a meta step: the mean OTG weight, its zero fraction and the validation loss
    (``pair_weights``), or the last λ step (``threshold``).
    """

    def __init__(
        self,
        loss: DDTASLoss,
        mode: OTGMode = "pair_weights",
        meta_lr: float = 1.0,
        threshold_lr: float = 0.01,
        lam_bounds: tuple[float, float] = (0.0, 0.9),
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(loss, DDTASLoss):
            raise TypeError(f"the online threshold generator is DDTAS's; got a {type(loss).__name__}")
        if mode not in ("pair_weights", "threshold"):
            raise ValueError(f"unknown OTG mode {mode!r}")
        self.loss = loss
        self.otg_mode = mode
        self.meta_lr = float(meta_lr)
        self.threshold_lr = float(threshold_lr)
        self.lam_bounds = (float(lam_bounds[0]), float(lam_bounds[1]))
        self.val_fraction = float(val_fraction)
        self._otg_stats: dict[str, float] = {}
        self._val: tuple[torch.Tensor, torch.Tensor, np.ndarray, Iterator[np.ndarray]] | None = None

    # ------------------------------------------------------------------------------------- trainer hooks
    def prepare(
        self, patches: torch.Tensor, labels: torch.Tensor, train_idx: np.ndarray, seed: int, identities_per_batch: int
    ) -> np.ndarray:
        """Keep ``val_fraction`` of the identities (at least 2) aside for validation batches of
        ``identities_per_batch`` / 8 identities × 2 views; returns the indices left for training."""
        lab = labels.numpy()
        unique = np.unique(lab[train_idx])
        rng = np.random.default_rng(seed + 99)
        held = rng.choice(unique, max(2, int(self.val_fraction * len(unique))), replace=False)
        is_val = np.isin(lab[train_idx], held)
        val_idx = train_idx[is_val]
        sampler = PKSampler(labels[val_idx], max(2, identities_per_batch // 8), 2, seed=seed + 1)
        self._val = (patches, labels, val_idx, sampler.batches(10**9))
        return train_idx[~is_val]

    def before_step(self, model: nn.Module, patches: torch.Tensor, labels: torch.Tensor) -> None:
        if self._val is None:
            raise RuntimeError("prepare first (the trainer does)")
        all_patches, all_labels, val_idx, stream = self._val
        val = val_idx[next(stream)]
        self.meta_step(model, patches, labels, all_patches[val], all_labels[val])

    def statistics(self) -> dict[str, float]:
        return dict(self._otg_stats)

    # ---------------------------------------------------------------------------------------- the meta step
    def _functional_loss(self, desc: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """Unweighted loss at λ = ``lam`` without touching any state (the validation objective)."""
        desc = desc.float() if desc.dtype != torch.float64 else desc
        sim = desc @ desc.t()
        keep_pos, keep_neg, _ = self.loss.mine(sim.detach(), labels.reshape(-1).long())
        return self.loss.soft_contrastive(sim, keep_pos, keep_neg, lam)

    def _validation_after_step(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        train_loss: torch.Tensor,
        val_patches: torch.Tensor,
        val_labels: torch.Tensor,
    ) -> torch.Tensor:
        """Validation loss after one virtual SGD step θ' = θ − η ∇θ L_tr, differentiable through the step."""
        grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True, allow_unused=True)
        new_params = {n: (p - self.meta_lr * g if g is not None else p) for (n, p), g in zip(params.items(), grads)}
        desc_val = functional_call(model, (new_params, buffers), (val_patches,))
        return self._functional_loss(desc_val, val_labels, float(self.loss.lam))

    def meta_step(
        self,
        model: nn.Module,
        train_patches: torch.Tensor,
        train_labels: torch.Tensor,
        val_patches: torch.Tensor,
        val_labels: torch.Tensor,
    ) -> dict[str, float]:
        """One step of the online threshold generator.

        Call it right before ``loss(model(train_patches), train_labels)`` of the same training batch. It runs the
        model functionally (parameters and buffers are not modified, no ``.grad`` is accumulated).

        * ``pair_weights``: computes and caches the per-pair weights the next forward call applies.
        * ``threshold``: updates λ (a buffer, so it is checkpointed).

        Returns:
            OTG statistics (also in :meth:`statistics`).
        """
        train_labels = train_labels.reshape(-1).long()
        val_labels = val_labels.reshape(-1).long()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        with torch.enable_grad(), torch.autocast(device_type=train_patches.device.type, enabled=False):
            desc = functional_call(model, (params, buffers), (train_patches,))
            desc = desc if desc.dtype == torch.float64 else desc.float()
            sim = desc @ desc.t()
            if self.otg_mode == "pair_weights":
                keep_pos, keep_neg, _ = self.loss.mine(sim.detach(), train_labels.to(sim.device))
                selected = keep_pos | keep_neg
                n_sel = int(selected.sum())
                if n_sel == 0:
                    self.loss._otg_cache = None
                    self._otg_stats = {"otg_pairs": 0.0}
                    return dict(self._otg_stats)
                eps = torch.zeros(n_sel, dtype=sim.dtype, device=sim.device, requires_grad=True)
                w_mat = torch.zeros_like(sim).masked_scatter(selected, eps)
                l_tr = self.loss.soft_contrastive(sim, keep_pos, keep_neg, float(self.loss.lam), w_mat)
                l_val = self._validation_after_step(model, params, buffers, l_tr, val_patches, val_labels.to(sim.device))
                g_eps = torch.autograd.grad(l_val, eps, allow_unused=True)[0]
                if g_eps is None:
                    g_eps = torch.zeros_like(eps)
                w = otg_normalise(g_eps.detach())
                weights = torch.ones_like(sim).masked_scatter(selected, w)
                self.loss.weight_next_call(train_labels, keep_pos, keep_neg, weights)
                self._otg_stats = {
                    "otg_pairs": float(n_sel),
                    "otg_weight_mean": float(w.mean()),
                    "otg_zero_fraction": float((w == 0).float().mean()),
                    "otg_val_loss": float(l_val.detach()),
                }
            else:
                lam_t = torch.tensor(float(self.loss.lam), dtype=sim.dtype, device=sim.device, requires_grad=True)
                keep_pos, keep_neg, _ = self.loss.mine(sim.detach(), train_labels.to(sim.device))
                l_tr = self.loss.soft_contrastive(sim, keep_pos, keep_neg, lam_t)
                l_val = self._validation_after_step(model, params, buffers, l_tr, val_patches, val_labels.to(sim.device))
                g_lam = torch.autograd.grad(l_val, lam_t, allow_unused=True)[0]
                step = 0.0 if g_lam is None or not bool(torch.isfinite(g_lam)) else -self.threshold_lr * float(g_lam)
                new_lam = min(max(float(self.loss.lam) + step, self.lam_bounds[0]), self.lam_bounds[1])
                self.loss.lam.fill_(new_lam)
                self._otg_stats = {"otg_lam_step": step, "otg_val_loss": float(l_val.detach())}
        return dict(self._otg_stats)

