"""Shared pieces of the descriptor losses: the contract, label/pair masks and in-batch hardest negatives.

**The contract.** Every loss is an :class:`nn.Module` subclassing :class:`DescriptorLoss`, called as
``loss(descriptors, labels) -> scalar tensor`` where ``descriptors`` is (B, D) with unit rows and ``labels`` is (B,)
integer identities (3D points). A batch is P identities × K views (:class:`matcher.training.sampler.PKSampler`);
a HardNet-style batch is K = 2. Any state (running statistics, controllers, thresholds) lives in buffers, so it
is saved and restored by ``state_dict``/``load_state_dict``; :meth:`DescriptorLoss.statistics` returns the
current values for logging; the trainer reports training progress τ ∈ [0, 1] with
:meth:`DescriptorLoss.set_progress` (used by SDGM's warm-up and the false-negative guards).

Losses compute in float32 (float64 if given float64) with autocast disabled, so bf16/fp16 descriptors from an
autocast forward pass are accepted; the gradient flows back to them in their own dtype.

**Pairs.** Pair-based losses (HardNet, SDGM, Smart Mining) form disjoint positive pairs inside each identity:
views are taken in batch order and paired (1st, 2nd), (3rd, 4th), ... so a K = 2 batch gives exactly one pair
(a_j, p_j) per identity, and an odd last view only serves as a negative (:func:`pair_indices`).

**Hardest in-batch negative** (shared/docs/methods.md §1.3, SDGM-code and HardNet-code): pair j's negative
similarity is the maximum, over candidates x whose label differs from y_j, of x·a_j and x·p_j, so a_j and p_j
share one negative. The candidates (``sides``) are

* ``"all"`` (SDGM): every other-label row of the batch, i.e. max(S_ap, S_apᵀ, S_aa, S_pp) of §1.3. As in the
  released code the guard acts on *pairs*: the other pair i is ignored as a whole when the largest of its four
  similarities to pair j reaches ``t_fn`` (rows in no pair, e.g. the odd view of a K = 3 identity, are groups of
  one);
* ``"cross"`` (HardNet with anchor swap): the other pairs' positives for a_j and anchors for p_j, each distance
  guarded on its own (HardNet-code);
* ``"anchor"`` (HardNet without anchor swap): the other pairs' positives for a_j only.

Candidates at or above the false-negative threshold ``t_fn`` are ignored. A pair with no admissible candidate is
*dropped* (``valid = False``) instead of producing arccos(−9) = NaN as the released SDGM code would (T-S3).
Excluding same-label rows (rather than only the diagonal as in the released code) matters when an identity
has more than one pair in the batch; for HardNet-style batches the two are identical.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = [
    "DescriptorLoss",
    "NegativeSides",
    "hardest_negatives",
    "pair_indices",
    "same_label_mask",
    "zero_loss",
]

NegativeSides = Literal["all", "cross", "anchor"]

#: sentinel similarity of masked candidates (any real cosine is >= -1).
_MASKED = -10.0


def same_label_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B,) labels -> (B, B) bool, True where two rows share a label (diagonal included)."""
    return labels[:, None] == labels[None, :]


def pair_indices(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint positive pairs inside each identity, in batch order.

    The r-th occurrence (0-based, in batch order) of a label with even r is paired with the (r+1)-th occurrence.

    Args:
        labels: (B,) integer labels.

    Returns:
        (idx_a, idx_p): (N,) int64 indices of anchors and positives, sorted by anchor index.
    """
    labels = labels.reshape(-1)
    b = labels.numel()
    if b < 2:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty.clone()
    same = same_label_mask(labels)
    earlier = torch.ones(b, b, dtype=torch.bool, device=labels.device).tril(-1)
    rank = (same & earlier).sum(1)  # occurrence number of each row within its label
    partner = same & (rank[None, :] == rank[:, None] + 1)
    is_anchor = (rank % 2 == 0) & partner.any(1)
    idx_a = torch.nonzero(is_anchor).reshape(-1)
    idx_p = partner[idx_a].float().argmax(1)
    return idx_a, idx_p


def hardest_negatives(
    sim: torch.Tensor,
    labels: torch.Tensor,
    idx_a: torch.Tensor,
    idx_p: torch.Tensor,
    sides: NegativeSides = "all",
    fn_threshold: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest in-batch negative similarity of every pair (methods.md §1.3).

    Args:
        sim: (B, B) cosine similarities of the batch.
        labels: (B,) labels.
        idx_a, idx_p: (N,) anchor and positive rows of the pairs (:func:`pair_indices`).
        sides: candidate set, see the module docstring.
        fn_threshold: false-negative guard; candidates with similarity >= this are ignored.

    Returns:
        (s_n, valid): (N,) hardest negative similarity (0 where no candidate is admissible) and (N,) bool.
        The gradient flows to the selected similarity only.
    """
    ya = labels[idx_a]
    n = idx_a.numel()
    if sides == "all":
        # Candidate groups: every pair (a_i, p_i), plus every row in no pair as a group of one. The group's value
        # for pair j is M_ji = max over its members x of max(x·a_j, x·p_j); a group is masked as a whole if
        # M_ji >= t_fn, exactly as the released code masks max(S_ap, S_apᵀ, S_aa, S_pp).
        b = labels.numel()
        in_pair = torch.zeros(b, dtype=torch.bool, device=labels.device)
        in_pair[idx_a] = True
        in_pair[idx_p] = True
        single = torch.nonzero(~in_pair).reshape(-1)
        m1 = torch.cat([idx_a, single])
        m2 = torch.cat([idx_p, single])
        rowmax = torch.maximum(sim[idx_a], sim[idx_p])  # (N, B)
        cand = torch.maximum(rowmax[:, m1], rowmax[:, m2])  # (N, G)
        other = labels[m1][None, :] != ya[:, None]
        admissible = other & (cand < fn_threshold)
    elif sides == "anchor":
        cand = sim[idx_a][:, idx_p]  # a_j·p_i
        admissible = (ya[None, :] != ya[:, None]) & (cand < fn_threshold)
    elif sides == "cross":
        # a_j·p_i (row) and p_j·a_i (column), each guarded on its own as HardNet's code does.
        other = ya[None, :] != ya[:, None]
        s_ap = sim[idx_a][:, idx_p]
        s_pa = sim[idx_p][:, idx_a]
        ok_ap = other & (s_ap < fn_threshold)
        ok_pa = other & (s_pa < fn_threshold)
        fill = torch.full_like(s_ap, _MASKED)
        cand = torch.maximum(torch.where(ok_ap, s_ap, fill), torch.where(ok_pa, s_pa, fill))
        admissible = ok_ap | ok_pa
    else:
        raise ValueError(f"unknown sides {sides!r}")
    cand = torch.where(admissible, cand, torch.full_like(cand, _MASKED))
    if cand.shape[1] == 0:
        s_n = torch.zeros(n, dtype=sim.dtype, device=sim.device)
        return s_n, torch.zeros(n, dtype=torch.bool, device=sim.device)
    s_n = cand.max(1).values
    valid = admissible.any(1)
    s_n = torch.where(valid, s_n, torch.zeros_like(s_n))
    return s_n, valid


def zero_loss(descriptors: torch.Tensor) -> torch.Tensor:
    """A zero scalar connected to the graph (so ``backward()`` works and gives zero gradients)."""
    return descriptors.sum() * 0.0


class DescriptorLoss(nn.Module):
    """Base class of the descriptor losses: ``loss(descriptors (B, D), labels (B,)) -> scalar``.

    Subclasses implement :meth:`compute` on validated descriptors (float32 or float64, autocast off). The base
    class holds the training progress τ (a buffer, so it is checkpointed) and the per-batch statistics of the
    last call (``self._last``), which :meth:`statistics` merges with the subclass's running state.
    """

    progress: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self._last: dict[str, float] = {}

    def set_progress(self, tau: float) -> None:
        """Set training progress τ = (samples seen) / (samples in the whole run), clipped to [0, 1].

        The trainer calls this before each step. SDGM's warm-up (τ < 0.1) and the false-negative guards
        (from τ >= 0.125) read it; losses without schedules ignore it.
        """
        self.progress.fill_(min(max(float(tau), 0.0), 1.0))

    def statistics(self) -> dict[str, float]:
        """Current statistics for logging (floats): the last batch's values and any running state."""
        return {"progress": float(self.progress), **self._last}

    def forward(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Validate inputs, compute in float32 (or float64) with autocast off, and return the scalar loss."""
        if descriptors.ndim != 2:
            raise ValueError(f"descriptors must be (B, D), got shape {tuple(descriptors.shape)}")
        labels = labels.reshape(-1)
        if labels.shape[0] != descriptors.shape[0]:
            raise ValueError(f"{descriptors.shape[0]} descriptors but {labels.shape[0]} labels")
        if labels.is_floating_point():
            raise ValueError("labels must be integers")
        labels = labels.to(device=descriptors.device, dtype=torch.long)
        dtype = torch.float64 if descriptors.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=descriptors.device.type, enabled=False):
            x = descriptors.to(dtype)
            if x.shape[0] == 0:
                return zero_loss(x)
            return self.compute(x, labels)

    def compute(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Loss on (B, D) float descriptors and (B,) int64 labels; implemented by subclasses."""
        raise NotImplementedError
