"""DDTAS: asymmetric sample mining (ASMS / AT-ASMS), the soft contrastive loss and the online threshold generator."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from matcher.losses.base import DescriptorLoss, zero_loss

__all__ = [
    "DDTASLoss",
    "asms_select",
    "at_asms_tolerances",
    "otg_normalise",
    "soft_contrastive_anchor",
]

OTGMode = Literal["pair_weights", "threshold"]


def at_asms_tolerances(r: float, m: float) -> tuple[float, float]:
    """AT-ASMS tolerances (methods.md §4.3, T-D1): for r > 1, τ = σ(r)/2, γ_pos = m(1 + τ), γ_neg = (m/10)(1 − τ);
    otherwise (m, m/10)."""
    if r > 1.0:
        tau = 0.5 / (1.0 + math.exp(-r))
        return m * (1.0 + tau), (m / 10.0) * (1.0 - tau)
    return m, m / 10.0


def asms_select(
    pos: torch.Tensor, neg: torch.Tensor, gamma_pos: float, gamma_neg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASMS for one anchor (§4.2, T-D2): keep negatives with s > min(pos) − γ_neg and positives with
    s < max(neg) + γ_pos. Returns boolean masks over ``pos`` and ``neg`` (all False if either set is empty)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return torch.zeros_like(pos, dtype=torch.bool), torch.zeros_like(neg, dtype=torch.bool)
    return pos < neg.max() + gamma_pos, neg > pos.min() - gamma_neg


def soft_contrastive_anchor(
    pos: torch.Tensor, neg: torch.Tensor, lam: float, alpha: float, beta: float
) -> torch.Tensor:
    """L_i = (2/β) mean_p log(1 + e^{−β(s_p − λ)}) + (2/α) mean_n log(1 + e^{α(s_n − λ)}) for mined sets (§4.4)."""
    return (2.0 / beta) * F.softplus(-beta * (pos - lam)).mean() + (2.0 / alpha) * F.softplus(alpha * (neg - lam)).mean()


def otg_normalise(g: torch.Tensor) -> torch.Tensor:
    """OTG weights from g = ∂L_val/∂ε (§4.5 step 6, T-D3): w = relu(−g), /sum, /max; all-zero → ones [PROPOSAL]."""
    w = torch.relu(-g)
    total = w.sum()
    if not bool(total > 0) or not bool(torch.isfinite(total)):
        return torch.ones_like(g)
    w = w / total
    return w / w.max()


class DDTASLoss(DescriptorLoss):
    """DDTAS (Jiang, Yao, Liu, Shen, Nie, Hua, "Dual Dynamic Threshold Adjustment Strategy for Deep Metric
    Learning", ACM TOMM 2024, arXiv 2404.19282), following the released code (``DDTAS``: ``losses/SoftCon.py``,
    ``trainer_DDTAS.py``) where it exists, with the patch rescaling of shared/docs/methods.md §4.6.

    **ASMS** (asymmetric mining), for anchor i with positive similarities P_i (other same-label rows, excluding
    s ≥ 1 − 1e-5 as the code does) and negative similarities N_i (other-label rows, minus the false-negative
    guard): keep n if s_in > min P_i − γ_neg, keep p if s_ip < max N_i + γ_pos.

    **AT-ASMS** (``adaptive=True``): a first pass with tolerance m for negatives (the released ``SoftCon.py``;
    methods.md §4.3 said m/10 until 2026-12-01) counts ñ mined negatives (over all anchors) and
    P_tot positive pairs (ordered, all of them); r = ñ / P_tot; if r > 1, τ = σ(r)/2, γ_pos = m(1 + τ),
    γ_neg = (m/10)(1 − τ), else (m, m/10); the second pass mines with those. With K = 2 views P_tot = B, so r is
    the mean number of mined negatives per anchor (methods.md §4.6's "(mined negatives)/(N pairs)" counts the
    same quantity per pair; this module keeps the general definition).

    **Soft contrastive loss** (per anchor with both mined sets non-empty; others contribute 0):

        L_i = (2/β) mean_{p∈P̃_i} log(1 + e^{−β(s_ip − λ)}) + (2/α) mean_{n∈Ñ_i} log(1 + e^{α(s_in − λ)}),
        L = (1/B) Σ_i L_i.

    **Online threshold generator** (``use_otg=True``; off by default, it costs ~3 forward and 2 backward passes):
    the trainer calls :meth:`meta_step` with the model, the training batch and a validation batch (P×K from
    held-out *training* identities) *before* ``loss(model(train_patches), train_labels)``:

    * ``otg_mode="pair_weights"`` (the released code's behaviour, verified): per-pair weights ε (zeros) on the
      pairs mined in the training batch; one virtual SGD step θ' = θ − η∇_θ Σ ε_k ℓ_k (``create_graph``); the
      unweighted validation loss at θ'; g = ∂L_val/∂ε; w = relu(−g)/sum/max (:func:`otg_normalise`). The next
      forward call on a batch with the same labels reuses that call's mined pairs with weights w (one use).
      Since ε = 0, θ' = θ and η only scales g, which the normalisation removes.
    * ``otg_mode="threshold"`` [PROPOSAL §4.5, on λ]: the paper says the OTG outputs a *threshold* by one
      gradient step, which the code does not show. Here the meta-variable is the loss threshold λ (the mining
      tolerance m is not differentiable): λ ← clip(λ − η_λ ∂L_val(θ'(λ))/∂λ, ``lam_bounds``) with
      θ'(λ) = θ − η∇_θ L_tr(θ; λ) and a validation loss at the current λ (held fixed).

    The model is run functionally (``torch.func.functional_call``) with copies of its buffers, so the meta step
    changes neither parameters nor BatchNorm statistics. DDTAS freezes BN throughout; SDGMNet trains BN, so the
    model is run in its own mode.

    Hyper-parameters (defaults; [code] = released code, [patch] = §4.6 rescaling):

    * ``m`` = 0.1 (base tolerance; [code] script value, γ_pos = m, γ_neg = m/10);
    * ``lam`` λ = 0.5 ([patch]; the code hard-codes 0.7 for 512-d retrieval embeddings);
    * ``alpha`` α = 40 (negative steepness, [code] script), ``beta`` β = 2 (positive steepness, [code] default);
    * ``adaptive`` = True (AT-ASMS);
    * ``fn_angle`` = 0.6 rad from progress ``fn_start`` = 0.125 ([patch]: SDGM's false-negative guard);
      ``fn_angle=None`` disables it;
    * ``use_otg`` = False, ``otg_mode`` = "pair_weights", ``meta_lr`` η = 1.0, ``threshold_lr`` η_λ = 0.01,
      ``lam_bounds`` = (0.0, 0.9).

    Statistics: r, τ, γ_pos, γ_neg, λ, mined positives/negatives per anchor, fraction of anchors used, loss, and
    after a meta step the mean OTG weight, its zero fraction, and the last λ step.
    """

    def __init__(
        self,
        m: float = 0.1,
        lam: float = 0.5,
        alpha: float = 40.0,
        beta: float = 2.0,
        adaptive: bool = True,
        fn_angle: float | None = 0.6,
        fn_start: float = 0.125,
        use_otg: bool = False,
        otg_mode: OTGMode = "pair_weights",
        meta_lr: float = 1.0,
        threshold_lr: float = 0.01,
        lam_bounds: tuple[float, float] = (0.0, 0.9),
        pos_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if otg_mode not in ("pair_weights", "threshold"):
            raise ValueError(f"unknown otg_mode {otg_mode!r}")
        self.m = float(m)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.adaptive = bool(adaptive)
        self.fn_angle = fn_angle
        self.fn_start = float(fn_start)
        self.use_otg = bool(use_otg)
        self.otg_mode = otg_mode
        self.meta_lr = float(meta_lr)
        self.threshold_lr = float(threshold_lr)
        self.lam_bounds = (float(lam_bounds[0]), float(lam_bounds[1]))
        self.pos_eps = float(pos_eps)
        self.register_buffer("lam", torch.tensor(float(lam), dtype=torch.float64))
        self._otg_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._otg_stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------- mining
    def _candidate_masks(self, sim: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = sim.shape[0]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(b, dtype=torch.bool, device=sim.device)
        pos = same & ~eye & (sim < 1.0 - self.pos_eps)
        neg = ~same
        if self.fn_angle is not None and float(self.progress) >= self.fn_start:
            neg = neg & (sim < math.cos(self.fn_angle))
        return pos, neg

    @staticmethod
    def _asms(
        sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, gamma_pos: float, gamma_neg: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        big = 10.0
        min_pos = torch.where(pos, sim, torch.full_like(sim, big)).min(1, keepdim=True).values
        max_neg = torch.where(neg, sim, torch.full_like(sim, -big)).max(1, keepdim=True).values
        usable = (pos.any(1) & neg.any(1))[:, None]
        keep_pos = pos & (sim < max_neg + gamma_pos) & usable
        keep_neg = neg & (sim > min_pos - gamma_neg) & usable
        return keep_pos, keep_neg

    @torch.no_grad()
    def mine(self, sim: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """AT-ASMS (or ASMS with ``adaptive=False``) on a (B, B) similarity matrix.

        Returns:
            (keep_pos, keep_neg) (B, B) bool masks (row = anchor) and the mining statistics.
        """
        pos, neg = self._candidate_masks(sim, labels)
        gamma_pos, gamma_neg = self.m, self.m / 10.0
        r, tau = float("nan"), 0.0
        if self.adaptive:
            # First pass: negatives counted with tolerance m, not m/10 (DDTAS's SoftCon.py; methods.md §4.3).
            _, keep_neg0 = self._asms(sim, pos, neg, self.m, self.m)
            p_tot = int(pos.sum())
            r = float(keep_neg0.sum()) / p_tot if p_tot > 0 else 0.0
            gamma_pos, gamma_neg = at_asms_tolerances(r, self.m)
            tau = 0.5 / (1.0 + math.exp(-r)) if r > 1.0 else 0.0
        keep_pos, keep_neg = self._asms(sim, pos, neg, gamma_pos, gamma_neg)
        b = max(sim.shape[0], 1)
        stats = {
            "r": r,
            "tau": tau,
            "gamma_pos": gamma_pos,
            "gamma_neg": gamma_neg,
            "mined_pos_per_anchor": float(keep_pos.sum()) / b,
            "mined_neg_per_anchor": float(keep_neg.sum()) / b,
            "anchors_used": float((keep_pos.any(1) & keep_neg.any(1)).sum()) / b,
        }
        return keep_pos, keep_neg, stats

    # --------------------------------------------------------------------------------------------- loss
    def _soft_contrastive(
        self,
        sim: torch.Tensor,
        keep_pos: torch.Tensor,
        keep_neg: torch.Tensor,
        lam: torch.Tensor | float,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(1/B) Σ_i L_i with optional per-pair weights (B, B) multiplying each pair's term."""
        b = sim.shape[0]
        n_pos = keep_pos.sum(1).clamp_min(1).to(sim.dtype)
        n_neg = keep_neg.sum(1).clamp_min(1).to(sim.dtype)
        used = (keep_pos.any(1) & keep_neg.any(1)).to(sim.dtype)
        pos_term = (2.0 / self.beta) * F.softplus(-self.beta * (sim - lam))
        neg_term = (2.0 / self.alpha) * F.softplus(self.alpha * (sim - lam))
        zero = torch.zeros((), dtype=sim.dtype, device=sim.device)
        pos_term = torch.where(keep_pos, pos_term, zero)
        neg_term = torch.where(keep_neg, neg_term, zero)
        if weights is not None:
            pos_term = pos_term * weights
            neg_term = neg_term * weights
        per_anchor = pos_term.sum(1) / n_pos + neg_term.sum(1) / n_neg
        return (per_anchor * used).sum() / b

    def compute(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = descriptors @ descriptors.t()
        weights = None
        cache = self._otg_cache
        self._otg_cache = None
        if self.use_otg and cache is not None and torch.equal(cache[0], labels.cpu()):
            keep_pos, keep_neg, weights = cache[1].to(sim.device), cache[2].to(sim.device), cache[3].to(sim)
            _, _, stats = self.mine(sim.detach(), labels)
        else:
            keep_pos, keep_neg, stats = self.mine(sim.detach(), labels)
        if not bool((keep_pos.any(1) & keep_neg.any(1)).any()):
            self._last = {**stats, "lam": float(self.lam), "loss": 0.0}
            return zero_loss(descriptors)
        loss = self._soft_contrastive(sim, keep_pos, keep_neg, float(self.lam), weights)
        self._last = {**stats, "lam": float(self.lam), "loss": float(loss.detach()), "otg_weighted": float(weights is not None)}
        return loss

    # ---------------------------------------------------------------------------------------------- OTG
    def _functional_loss(self, desc: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
        """Unweighted loss at λ = ``lam`` without touching any state (the validation objective)."""
        desc = desc.float() if desc.dtype != torch.float64 else desc
        sim = desc @ desc.t()
        keep_pos, keep_neg, _ = self.mine(sim.detach(), labels.reshape(-1).long())
        return self._soft_contrastive(sim, keep_pos, keep_neg, lam)

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
        return self._functional_loss(desc_val, val_labels, float(self.lam))

    def meta_step(
        self,
        model: nn.Module,
        train_patches: torch.Tensor,
        train_labels: torch.Tensor,
        val_patches: torch.Tensor,
        val_labels: torch.Tensor,
    ) -> dict[str, float]:
        """One step of the online threshold generator (needs ``use_otg=True``).

        Call it right before ``loss(model(train_patches), train_labels)`` of the same training batch. It runs the
        model functionally (parameters and buffers are not modified, no ``.grad`` is accumulated).

        * ``pair_weights``: computes and caches the per-pair weights the next forward call applies.
        * ``threshold``: updates λ (a buffer, so it is checkpointed).

        Returns:
            OTG statistics (also in :meth:`statistics`).
        """
        if not self.use_otg:
            raise RuntimeError("meta_step needs DDTASLoss(use_otg=True)")
        train_labels = train_labels.reshape(-1).long()
        val_labels = val_labels.reshape(-1).long()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        with torch.enable_grad(), torch.autocast(device_type=train_patches.device.type, enabled=False):
            desc = functional_call(model, (params, buffers), (train_patches,))
            desc = desc if desc.dtype == torch.float64 else desc.float()
            sim = desc @ desc.t()
            if self.otg_mode == "pair_weights":
                keep_pos, keep_neg, _ = self.mine(sim.detach(), train_labels.to(sim.device))
                selected = keep_pos | keep_neg
                n_sel = int(selected.sum())
                if n_sel == 0:
                    self._otg_cache = None
                    self._otg_stats = {"otg_pairs": 0.0}
                    return dict(self._otg_stats)
                eps = torch.zeros(n_sel, dtype=sim.dtype, device=sim.device, requires_grad=True)
                w_mat = torch.zeros_like(sim).masked_scatter(selected, eps)
                l_tr = self._soft_contrastive(sim, keep_pos, keep_neg, float(self.lam), w_mat)
                l_val = self._validation_after_step(model, params, buffers, l_tr, val_patches, val_labels.to(sim.device))
                g_eps = torch.autograd.grad(l_val, eps, allow_unused=True)[0]
                if g_eps is None:
                    g_eps = torch.zeros_like(eps)
                w = otg_normalise(g_eps.detach())
                weights = torch.ones_like(sim).masked_scatter(selected, w)
                self._otg_cache = (train_labels.cpu(), keep_pos.cpu(), keep_neg.cpu(), weights.detach().cpu())
                self._otg_stats = {
                    "otg_pairs": float(n_sel),
                    "otg_weight_mean": float(w.mean()),
                    "otg_zero_fraction": float((w == 0).float().mean()),
                    "otg_val_loss": float(l_val.detach()),
                }
            else:
                lam_t = torch.tensor(float(self.lam), dtype=sim.dtype, device=sim.device, requires_grad=True)
                keep_pos, keep_neg, _ = self.mine(sim.detach(), train_labels.to(sim.device))
                l_tr = self._soft_contrastive(sim, keep_pos, keep_neg, lam_t)
                l_val = self._validation_after_step(model, params, buffers, l_tr, val_patches, val_labels.to(sim.device))
                g_lam = torch.autograd.grad(l_val, lam_t, allow_unused=True)[0]
                step = 0.0 if g_lam is None or not bool(torch.isfinite(g_lam)) else -self.threshold_lr * float(g_lam)
                new_lam = min(max(float(self.lam) + step, self.lam_bounds[0]), self.lam_bounds[1])
                self.lam.fill_(new_lam)
                self._otg_stats = {"otg_lam_step": step, "otg_val_loss": float(l_val.detach())}
        return dict(self._otg_stats)

    def statistics(self) -> dict[str, float]:
        """Last batch's mining statistics, λ, and the last OTG statistics."""
        stats = super().statistics()
        stats["lam"] = float(self.lam)
        stats.update(self._otg_stats)
        return stats
