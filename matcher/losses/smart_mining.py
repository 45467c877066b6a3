"""Smart Mining's loss: the triplet + global loss on in-batch hardest negatives. Its global mining (the neighbour
index, the adaptive controller and the mined batches) is a miner, :class:`matcher.training.miners.SmartMiner`."""

from __future__ import annotations

import torch

from matcher.losses.base import DescriptorLoss, hardest_negatives, pair_indices, zero_loss

__all__ = ["SmartMiningLoss"]


class SmartMiningLoss(DescriptorLoss):
    """Smart Mining (Harwood, Kumar B G, Carneiro, Reid, Drummond, "Smart Mining for Deep Metric Learning",
    ICCV 2017), adapted to patch descriptors as proposed in shared/docs/methods.md §2.

    Only the paper's abstract could be read; the constants below are the note's recollection [MEM] or its
    proposals [PROPOSAL], not verified paper values. There is no released code to compare with.

    **Loss** on a batch (pairs from :func:`~matcher.losses.base.pair_indices`, squared chordal distances
    d² = 2 − 2 xᵀy on the unit sphere, negative = hardest other-label row of the batch, §1.3):

        ℓ_t,j = max(0, m + d²(a_j, p_j) − d²_n,j)                                   (triplet term)
        ℓ_g   = (σ²⁺ + σ²⁻) + λ_g max(0, μ⁺ − μ⁻ + t)                               (global term, Kumar B G 2016)
        L     = mean_j ℓ_t,j + w_g ℓ_g

    with μ±, σ²± the batch mean and (population) variance of d²(a_j, p_j) and d²_n,j.

    **Global mining** is a miner apart from the loss (:class:`matcher.training.miners.SmartMiner`, with its
    adaptive controller): it chooses the batches, so that the in-batch hardest negative sees globally hard
    negatives. Without it the loss trains on the trainer's random P×K batches.

    Hyper-parameters (defaults):

    * ``margin`` m = 0.5 (squared chordal units; the paper's value is unknown);
    * ``global_weight`` w_g = 1.0, ``global_lambda`` λ_g = 1.0, ``global_margin`` t = 0.5;
    * ``duplicate_cos`` = 1 − 1e-5: in-batch candidates at least this similar are not negatives.

    Statistics: the last batch's triplet/global terms, active fraction and mean distances.
    """

    def __init__(
        self,
        margin: float = 0.5,
        global_weight: float = 1.0,
        global_lambda: float = 1.0,
        global_margin: float = 0.5,
        duplicate_cos: float = 1.0 - 1e-5,
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.global_weight = float(global_weight)
        self.global_lambda = float(global_lambda)
        self.global_margin = float(global_margin)
        self.duplicate_cos = float(duplicate_cos)

    # ---------------------------------------------------------------------------------------------- the loss
    def compute(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        idx_a, idx_p = pair_indices(labels)
        if idx_a.numel() == 0:
            self._last = {"pairs": 0.0}
            return zero_loss(descriptors)
        sim = descriptors @ descriptors.t()
        s_n, valid = hardest_negatives(sim, labels, idx_a, idx_p, "all", self.duplicate_cos)
        if not bool(valid.any()):
            self._last = {"pairs": 0.0}
            return zero_loss(descriptors)
        s_p = (descriptors[idx_a] * descriptors[idx_p]).sum(1)[valid]
        d2_p = 2.0 - 2.0 * s_p
        d2_n = 2.0 - 2.0 * s_n[valid]
        triplet = torch.relu(self.margin + d2_p - d2_n)
        var_p = ((d2_p - d2_p.mean()) ** 2).mean()
        var_n = ((d2_n - d2_n.mean()) ** 2).mean()
        glob = var_p + var_n + self.global_lambda * torch.relu(d2_p.mean() - d2_n.mean() + self.global_margin)
        loss = triplet.mean() + self.global_weight * glob
        with torch.no_grad():
            self._last = {
                "loss": float(loss.detach()),
                "triplet": float(triplet.detach().mean()),
                "global": float(glob.detach()),
                "active_fraction": float((triplet > 0).float().mean()),
                "mean_d2_pos": float(d2_p.detach().mean()),
                "mean_d2_neg": float(d2_n.detach().mean()),
                "pairs": float(d2_p.numel()),
            }
        return loss
