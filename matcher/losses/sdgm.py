"""SDGM loss: self-distillation-free gradient modulation on included angles (SDGMNet)."""

from __future__ import annotations

import math

import torch

from matcher.losses.base import DescriptorLoss, hardest_negatives, pair_indices, zero_loss

__all__ = ["SDGMLoss", "probabilistic_margin", "auto_focus_weight"]

_SQRT2 = math.sqrt(2.0)


def probabilistic_margin(mean: float, std: float, p_m: float) -> float:
    """m_δ = μ_δ + σ_δ Φ⁻¹(p_m), the p_m-quantile of N(μ_δ, σ_δ²) (methods.md §1.5 (b), test vector T-S1)."""
    return float(mean + std * _SQRT2 * torch.erfinv(torch.tensor(2.0 * p_m - 1.0, dtype=torch.float64)))


def auto_focus_weight(theta: torch.Tensor, mean: float, std: float, width_offset: float = math.pi / 6) -> torch.Tensor:
    """w^s = exp(−(θ − μ)² / (2 (π/6 + σ)²)) (methods.md §1.5 (a), test vector T-S2)."""
    return torch.exp(-((theta - mean) ** 2) / (2.0 * (width_offset + std) ** 2))


class SDGMLoss(DescriptorLoss):
    """SDGM loss (Ma & Deng, "SDGMNet: Statistic-based Dynamic Gradient Modulation for Local Descriptor Learning",
    arXiv 2106.04434). **Follows the released code** (``ACuOoOoO/SDGMNet`` ``losses.py: SDGMloss``), not the
    paper's equations, which could not be read (shared/docs/methods.md §1).

    For pair j with positive angle θ_p,j = arccos min(a_jᵀp_j, 1 − 1e-5) and hardest in-batch negative angle
    θ_n,j (§1.3, candidates = every other-label row, shared by a_j and p_j), the "pseudo loss" is

        L = Σ_j [ α ŵ_p,j θ_p,j − ŵ_n,j θ_n,j ],   ŵ_p,j = w^s_p,j w^c_j / Π_p,   ŵ_n,j = w^s_n,j w^c_j / Π_n,

    with detached weights (gradients flow through the angles only; the included angle has a unit-norm gradient,
    §1.4):

    * auto-focus w^s = exp(−(θ − μ)² / (2 (π/6 + σ)²)) with the running mean/std of θ_p (resp. θ_n);
    * probabilistic margin w^c_j = 1[δ_j ≥ μ_δ + σ_δ Φ⁻¹(p_m)], δ_j = θ_p,j − θ_n,j;
    * warm-up: w^s = w^c = 1 while τ < ``warmup`` (training progress, :meth:`set_progress`);
    * power adjustment Π_p = EMA_λ(Σ_j w^s_p,j w^c_j), Π_n likewise;
    * false-negative guard: candidates with cosine >= cos(``fn_angle``) are not negatives once τ >= ``fn_start``
      (before: cosine >= 1 − 1e-5).

    Running statistics (μ, σ of θ_p, θ_n, δ; Π_p, Π_n) are EMAs μ ← λμ + (1−λ)μ̂ of per-batch values (unbiased
    std), **updated with the current batch before** its weights are computed, as in the code. The code's
    initialisation is followed: μ_p, σ_p, μ_n, σ_n and σ_δ are set from the first batch, μ_δ starts at
    ``delta_mean_init`` = −1 and Π at ``power_init`` = 10000 (``None`` = first batch's sums, which the code does
    when resuming; useful for short runs with small batches, where 10000 would shrink the first steps).

    Hyper-parameters (defaults of the released code):

    * ``alpha`` α = 0.9 (relative weight of positives);
    * ``p_m`` = 0.6 (fraction of triplets cut by the probabilistic margin; Φ⁻¹(0.6) = 0.253347);
    * ``momentum`` λ = 0.999 (every running statistic);
    * ``width_offset`` = π/6 (auto-focus width offset);
    * ``warmup`` = 0.1, ``fn_start`` = 0.125 (fractions of training), ``fn_angle`` = 0.6 rad;
    * ``power_init`` = 10000.0, ``delta_mean_init`` = −1.0;
    * ``eps`` = 1e-5 (similarities are clamped to [−1 + ε, 1 − ε] before arccos);
    * ``total_steps`` = None: if given, τ advances by 1/total_steps per training-mode call, so the trainer need
      not call :meth:`set_progress`.

    Deviations from the code, all for robustness: a pair whose negatives are all masked (possible with small
    batches and the guard on) is dropped instead of giving arccos(−9) = NaN (T-S3); the std of a batch with a
    single pair (unbiased std undefined) leaves the running std unchanged; a batch without any valid pair returns
    a zero loss and does not touch the statistics; negatives are other-*label* rows, which equals the code's
    off-diagonal rule on HardNet-style batches.

    In eval mode (``loss.eval()``) the running statistics and Π are read but not updated (for validation losses).

    Statistics: the running μ_p, σ_p, μ_n, σ_n, μ_δ, σ_δ, Π_p, Π_n, the margin m_δ, the last batch's mean
    angles, the kept fraction (w^c = 1), the pair count and the false-negative threshold.
    """

    def __init__(
        self,
        alpha: float = 0.9,
        p_m: float = 0.6,
        momentum: float = 0.999,
        width_offset: float = math.pi / 6,
        warmup: float = 0.1,
        fn_start: float = 0.125,
        fn_angle: float = 0.6,
        power_init: float | None = 10000.0,
        delta_mean_init: float | None = -1.0,
        eps: float = 1e-5,
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < p_m < 1.0:
            raise ValueError("p_m must be in (0, 1)")
        self.alpha = float(alpha)
        self.p_m = float(p_m)
        self.momentum = float(momentum)
        self.width_offset = float(width_offset)
        self.warmup = float(warmup)
        self.fn_start = float(fn_start)
        self.fn_angle = float(fn_angle)
        self.power_init = power_init
        self.delta_mean_init = delta_mean_init
        self.eps = float(eps)
        self.total_steps = total_steps
        for name in ("mu_p", "sigma_p", "mu_n", "sigma_n", "mu_delta", "sigma_delta", "power_p", "power_n"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    # ----------------------------------------------------------------------------------------------------------
    def false_negative_threshold(self) -> float:
        """t_fn: 1 − 1e-5 before τ reaches ``fn_start``, cos(``fn_angle``) afterwards (§1.3 step 4)."""
        return 1.0 - 1e-5 if float(self.progress) < self.fn_start else math.cos(self.fn_angle)

    def margin(self) -> float:
        """The current probabilistic margin m_δ = μ_δ + σ_δ Φ⁻¹(p_m)."""
        return probabilistic_margin(float(self.mu_delta), float(self.sigma_delta), self.p_m)

    def _ema(self, buf: torch.Tensor, value: float) -> None:
        buf.mul_(self.momentum).add_((1.0 - self.momentum) * value)

    @torch.no_grad()
    def _update_statistics(self, theta_p: torch.Tensor, theta_n: torch.Tensor) -> None:
        delta = theta_p - theta_n
        n = theta_p.numel()
        means = {"mu_p": float(theta_p.mean()), "mu_n": float(theta_n.mean()), "mu_delta": float(delta.mean())}
        stds = (
            {"sigma_p": float(theta_p.std()), "sigma_n": float(theta_n.std()), "sigma_delta": float(delta.std())}
            if n >= 2
            else {}
        )
        if not bool(self.initialised):
            for name, value in means.items():
                getattr(self, name).fill_(value)
            if self.delta_mean_init is not None:
                self.mu_delta.fill_(float(self.delta_mean_init))
            for name, value in stds.items():
                getattr(self, name).fill_(value)
        else:
            for name, value in {**means, **stds}.items():
                self._ema(getattr(self, name), value)

    def weights(self, theta_p: torch.Tensor, theta_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Un-normalised weights (w_p, w_n) and the margin indicator w^c for the current running statistics."""
        with torch.no_grad():
            if float(self.progress) < self.warmup:
                ones = torch.ones_like(theta_p)
                return ones, ones.clone(), ones.clone()
            w_c = ((theta_p - theta_n) >= self.margin()).to(theta_p.dtype)
            w_sp = auto_focus_weight(theta_p, float(self.mu_p), float(self.sigma_p), self.width_offset)
            w_sn = auto_focus_weight(theta_n, float(self.mu_n), float(self.sigma_n), self.width_offset)
            return w_sp * w_c, w_sn * w_c, w_c

    def compute(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.total_steps:
            self.set_progress(float(self.steps) / float(self.total_steps))
        idx_a, idx_p = pair_indices(labels)
        t_fn = self.false_negative_threshold()
        if idx_a.numel() == 0:
            self._last = {"pairs": 0.0, "fn_threshold": t_fn}
            return zero_loss(descriptors)
        sim = descriptors @ descriptors.t()
        s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, "all", t_fn)
        if not bool(valid.any()):
            self._last = {"pairs": 0.0, "fn_threshold": t_fn}
            return zero_loss(descriptors)
        s_p = (descriptors[idx_a] * descriptors[idx_p]).sum(1)[valid]
        s_n = s_n[valid]
        lo, hi = -1.0 + self.eps, 1.0 - self.eps
        theta_p = torch.arccos(s_p.clamp(lo, hi))
        theta_n = torch.arccos(s_n.clamp(lo, hi))
        tp, tn = theta_p.detach(), theta_n.detach()

        if self.training:
            self._update_statistics(tp, tn)
        w_p, w_n, w_c = self.weights(tp, tn)
        if self.training:
            with torch.no_grad():
                if not bool(self.initialised) and self.power_init is None:
                    self.power_p.fill_(float(w_p.sum()))
                    self.power_n.fill_(float(w_n.sum()))
                else:
                    if not bool(self.initialised):
                        self.power_p.fill_(float(self.power_init))
                        self.power_n.fill_(float(self.power_init))
                    self._ema(self.power_p, float(w_p.sum()))
                    self._ema(self.power_n, float(w_n.sum()))
                self.initialised.fill_(True)
                self.steps.add_(1)
        if not bool(self.initialised):
            # Evaluation before any training step: no running statistics yet, use batch-normalised weights.
            power_p, power_n = max(float(w_p.sum()), 1e-12), max(float(w_n.sum()), 1e-12)
        else:
            power_p, power_n = max(float(self.power_p), 1e-12), max(float(self.power_n), 1e-12)
        wp_hat = (w_p / power_p).to(theta_p.dtype)
        wn_hat = (w_n / power_n).to(theta_n.dtype)
        loss = (self.alpha * wp_hat * theta_p - wn_hat * theta_n).sum()
        with torch.no_grad():
            self._last = {
                "loss": float(loss.detach()),
                "batch_theta_p": float(tp.mean()),
                "batch_theta_n": float(tn.mean()),
                "kept_fraction": float(w_c.mean()),
                "batch_power_p": float(w_p.sum()),
                "batch_power_n": float(w_n.sum()),
                "pairs": float(tp.numel()),
                "dropped_pairs": float((~valid).sum()),
                "fn_threshold": t_fn,
            }
        return loss

    def statistics(self) -> dict[str, float]:
        """Running statistics (μ/σ of θ_p, θ_n, δ; Π_p, Π_n; m_δ) and the last batch's values."""
        stats = super().statistics()
        for name in ("mu_p", "sigma_p", "mu_n", "sigma_n", "mu_delta", "sigma_delta", "power_p", "power_n"):
            stats[name] = float(getattr(self, name))
        stats["margin_delta"] = self.margin()
        stats["steps"] = float(self.steps)
        return stats
