"""HardNet triplet margin loss with the hardest in-batch negative: the baseline every other loss must beat."""

from __future__ import annotations

import torch

from matcher.losses.base import DescriptorLoss, NegativeSides, hardest_negatives, pair_indices, zero_loss

__all__ = ["HardNetLoss"]


class HardNetLoss(DescriptorLoss):
    """HardNet loss (Mishchuk, Mishkin, Radenović, Matas, "Working hard to know your neighbor's margins: Local
    descriptor learning loss", NeurIPS 2017).

    For each positive pair j = (a_j, p_j) of the batch, with chordal distance D(x, y) = √(2 − 2 xᵀy + ε):

        L = mean_j max(0, m + D(a_j, p_j) − min_n D_jn),

    where the minimum runs over the hardest in-batch negative of the pair (:func:`~matcher.losses.base.
    hardest_negatives`): with anchor swap, min over i ≠ j of D(a_j, p_i) and D(a_i, p_j) (the released code's
    row- and column-minimum of the anchor–positive distance matrix).

    Hyper-parameters (defaults = the released code, ``DagnyT/hardnet`` ``code/HardNet.py``; shared/docs/methods.md
    §1.6):

    * ``margin`` m = 1.0;
    * ``anchor_swap`` = True (``sides="cross"``); False uses only D(a_j, p_i) (``sides="anchor"``);
    * ``eps`` ε = 1e-6 inside the square root;
    * ``duplicate_distance`` = 0.008: negatives closer than this are ignored (the code adds 10 to them), a
      guard against duplicate patches; equivalently cosine >= 1 − 0.008²/2.

    The paper and the released code agree on this loss; the code is followed for the duplicate guard. Pairs are
    formed by :func:`~matcher.losses.base.pair_indices`, so P × K batches with K > 2 work too, and negatives
    are other-label rows (not merely other pairs). Pairs without any admissible negative (e.g. a batch of one
    identity) are dropped; if none is left the loss is a zero connected to the graph.

    Statistics: ``loss``, ``pos_angle_mean``/``neg_angle_mean`` (radians), ``active_fraction`` (pairs with a
    non-zero hinge), ``pairs``.
    """

    def __init__(
        self, margin: float = 1.0, anchor_swap: bool = True, eps: float = 1e-6, duplicate_distance: float = 0.008
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.anchor_swap = bool(anchor_swap)
        self.eps = float(eps)
        self.duplicate_distance = float(duplicate_distance)

    @property
    def sides(self) -> NegativeSides:
        """Candidate negatives used by the hardest-negative selection."""
        return "cross" if self.anchor_swap else "anchor"

    def compute(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        idx_a, idx_p = pair_indices(labels)
        if idx_a.numel() == 0:
            self._last = {"pairs": 0.0}
            return zero_loss(descriptors)
        sim = descriptors @ descriptors.t()
        fn_threshold = 1.0 - 0.5 * self.duplicate_distance**2
        s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, self.sides, fn_threshold)
        if not bool(valid.any()):
            self._last = {"pairs": 0.0}
            return zero_loss(descriptors)
        s_p = (descriptors[idx_a] * descriptors[idx_p]).sum(1)
        s_p, s_n = s_p[valid], s_n[valid]
        d_p = torch.sqrt((2.0 - 2.0 * s_p).clamp_min(0.0) + self.eps)
        d_n = torch.sqrt((2.0 - 2.0 * s_n).clamp_min(0.0) + self.eps)
        hinge = torch.relu(self.margin + d_p - d_n)
        loss = hinge.mean()
        with torch.no_grad():
            self._last = {
                "loss": float(loss.detach()),
                "pos_angle_mean": float(torch.arccos(s_p.clamp(-1, 1)).mean()),
                "neg_angle_mean": float(torch.arccos(s_n.clamp(-1, 1)).mean()),
                "active_fraction": float((hinge > 0).float().mean()),
                "pairs": float(s_p.numel()),
            }
        return loss
