"""DDTAS: asymmetric sample mining (ASMS / AT-ASMS) and the soft contrastive loss (its online threshold generator is
the trainer hook :mod:`matcher.training.otg`)."""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from matcher.losses.base import DescriptorLoss, zero_loss

__all__ = [
    "DDTASLoss",
    "asms_select",
    "at_asms_tolerances",
    "otg_normalise",
    "soft_contrastive_anchor",
]


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

    **Online threshold generator**: a meta step before each training step, which either weights the next call's
    mined pairs (:meth:`weight_next_call`) or moves λ; it is a trainer hook apart from the loss,
    :class:`matcher.training.otg.OnlineThresholdGenerator` (``otg = true`` in a training config).

    Hyper-parameters (defaults; [code] = released code, [patch] = §4.6 rescaling):

    * ``m`` = 0.1 (base tolerance; [code] script value, γ_pos = m, γ_neg = m/10);
    * ``lam`` λ = 0.5 ([patch]; the code hard-codes 0.7 for 512-d retrieval embeddings);
    * ``alpha`` α = 40 (negative steepness, [code] script), ``beta`` β = 2 (positive steepness, [code] default);
    * ``adaptive`` = True (AT-ASMS);
    * ``fn_angle`` = 0.6 rad from progress ``fn_start`` = 0.125 ([patch]: SDGM's false-negative guard);
      ``fn_angle=None`` disables it.

    Statistics: r, τ, γ_pos, γ_neg, λ, mined positives/negatives per anchor, fraction of anchors used, loss, and
    whether the OTG's pair weights were applied.
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
        pos_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.m = float(m)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.adaptive = bool(adaptive)
        self.fn_angle = fn_angle
        self.fn_start = float(fn_start)
        self.pos_eps = float(pos_eps)
        self.register_buffer("lam", torch.tensor(float(lam), dtype=torch.float64))
        self._otg_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
    def soft_contrastive(
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
        if cache is not None and torch.equal(cache[0], labels.cpu()):
            keep_pos, keep_neg, weights = cache[1].to(sim.device), cache[2].to(sim.device), cache[3].to(sim)
            _, _, stats = self.mine(sim.detach(), labels)
        else:
            keep_pos, keep_neg, stats = self.mine(sim.detach(), labels)
        if not bool((keep_pos.any(1) & keep_neg.any(1)).any()):
            self._last = {**stats, "lam": float(self.lam), "loss": 0.0}
            return zero_loss(descriptors)
        loss = self.soft_contrastive(sim, keep_pos, keep_neg, float(self.lam), weights)
        self._last = {**stats, "lam": float(self.lam), "loss": float(loss.detach()), "otg_weighted": float(weights is not None)}
        return loss

    # ------------------------------------------------------------------------------- OTG pair weights
    def weight_next_call(
        self, labels: torch.Tensor, keep_pos: torch.Tensor, keep_neg: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """Have the next call on a batch with these ``labels`` (B,) use these mined pairs (B, B) with these
        per-pair weights (B, B) instead of mining (once; the online threshold generator's pair weights)."""
        self._otg_cache = (labels.reshape(-1).long().cpu(), keep_pos.cpu(), keep_neg.cpu(), weights.detach().cpu())

    def statistics(self) -> dict[str, float]:
        """Last batch's mining statistics and λ."""
        stats = super().statistics()
        stats["lam"] = float(self.lam)
        return stats
