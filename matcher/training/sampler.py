"""Batch sampling by identity: P identities × K views, and verification pairs for evaluation.

A HardNet-style batch is ``K = 2``: each identity (3D point) appears at most once per batch, with two different
views, as in HardNet's and SDGMNet's generators (shared/docs/methods.md §1.1). With ``K > 2`` the same holds with
K distinct views per identity (the P×K batches of DDTAS, §4.1).

With ``rays`` and ``wide_share`` (camera-track sets), a share of each batch's identities shows its two views at
the widest angle instead of two at random, so wide-baseline positives, rare among random pairs of a track, are
seen more often.

Everything is deterministic given ``seed`` (and the epoch, see :meth:`PKSampler.set_epoch`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

__all__ = ["PKSampler", "verification_pairs", "widest_pairs"]


def _as_numpy_labels(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


class PKSampler:
    """Batches of ``P`` distinct identities with ``K`` distinct views each.

    One epoch visits every eligible identity once, in a random order, in chunks of ``P``; each identity
    contributes ``K`` views drawn without replacement (for ``K = 2`` and an identity with exactly two views,
    both). Identities with fewer than ``K`` views are not eligible (their count is :attr:`num_skipped`).

    Indices of a batch are identity-major: the ``K`` views of one identity are consecutive, which is the order
    :func:`matcher.losses.base.pair_indices` pairs them in.

    Args:
        labels: (N,) integer identity of every sample.
        identities_per_batch: P.
        views_per_identity: K >= 2 (2 = HardNet-style batch).
        seed: seed of all draws.
        drop_last: drop the last, smaller batch of an epoch.
        rays: (N, 3) unit ray of every sample from its identity's 3D point to its camera (NaN: not known), or None.
        wide_share: with ``rays`` and ``K = 2``, the probability that an identity whose rays are all known
            contributes its two views at the widest angle (0: always two at random, the draws of a sampler
            without ``rays``).

    Example:
        >>> sampler = PKSampler(torch.tensor([0, 0, 1, 1, 2, 2]), identities_per_batch=2, seed=0)
        >>> [len(b) for b in sampler]
        [4]
    """

    def __init__(
        self,
        labels: torch.Tensor | np.ndarray,
        identities_per_batch: int,
        views_per_identity: int = 2,
        seed: int = 0,
        drop_last: bool = True,
        rays: torch.Tensor | np.ndarray | None = None,
        wide_share: float = 0.0,
    ) -> None:
        if not 0.0 <= wide_share <= 1.0:
            raise ValueError("wide_share must be in [0, 1]")
        if wide_share > 0 and (rays is None or views_per_identity != 2):
            raise ValueError("wide_share needs rays and views_per_identity = 2")
        if identities_per_batch < 1:
            raise ValueError("identities_per_batch must be >= 1")
        if views_per_identity < 2:
            raise ValueError("views_per_identity must be >= 2 (a batch needs positive pairs)")
        self.labels = _as_numpy_labels(labels)
        self.P = int(identities_per_batch)
        self.K = int(views_per_identity)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        uniq, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        eligible = counts >= self.K
        self.identities = uniq[eligible]
        self._members = [order[s : s + c] for s, c in zip(starts[eligible], counts[eligible])]
        self.num_skipped = int((~eligible).sum())
        if len(self.identities) == 0:
            raise ValueError(f"no identity has {self.K} or more views")
        self.wide_share = float(wide_share)
        self._widest = None if wide_share == 0 else widest_pairs(self._members, np.asarray(rays, np.float64))

    @classmethod
    def where_rays_known(cls, labels: torch.Tensor | np.ndarray, identities_per_batch: int, views_per_identity: int,
                         seed: int, rays: torch.Tensor | np.ndarray | None, wide_share: float) -> PKSampler:
        """A sampler that applies ``wide_share`` only if some of ``rays`` (N, 3) are known: with ``rays`` None or
        all NaN (e.g. homography sets) it is the plain sampler, whatever ``wide_share`` says."""
        known = rays is not None and bool(np.isfinite(np.asarray(rays)).any())
        return cls(labels, identities_per_batch, views_per_identity, seed=seed,
                   rays=rays if known and wide_share > 0 else None, wide_share=wide_share if known else 0.0)

    @property
    def widest_pairs(self) -> np.ndarray | None:
        """(identities, 2) sample indices of each identity's two views at the widest angle (-1: rays not known)."""
        return self._widest

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation :meth:`__iter__` yields (like DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.identities)
        return n // self.P if self.drop_last else -(-n // self.P)

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _batch(self, ids: np.ndarray, rng: np.random.Generator, wide: np.ndarray | None = None) -> np.ndarray:
        views = [rng.choice(self._members[i], self.K, replace=False) for i in ids]
        if wide is not None:
            for n, i in enumerate(ids):
                if wide[n] and self._widest[i, 0] >= 0:
                    views[n] = self._widest[i]
        return np.concatenate(views)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield the batches of the current epoch as int64 index arrays of length P·K (the last may be shorter)."""
        rng = self._rng(self.epoch)
        perm = rng.permutation(len(self.identities))
        wide_rng = np.random.default_rng([self.seed, self.epoch, 1])  # its own stream: wide_share = 0 draws as before
        for b in range(len(self)):
            ids = perm[b * self.P : (b + 1) * self.P]
            wide = None if self._widest is None else wide_rng.random(len(ids)) < self.wide_share
            yield self._batch(ids, rng, wide)

    def batches(self, num_batches: int, start_epoch: int = 0) -> Iterator[np.ndarray]:
        """Yield ``num_batches`` batches, running through as many epochs as needed (epochs ``start_epoch``, +1, ...)."""
        done, epoch = 0, start_epoch
        while done < num_batches:
            self.set_epoch(epoch)
            for batch in self:
                yield batch
                done += 1
                if done == num_batches:
                    return
            epoch += 1


def widest_pairs(members: list[np.ndarray], rays: np.ndarray) -> np.ndarray:
    """(len(members), 2) the two members of each group whose rays make the widest angle; -1 where a ray is NaN."""
    out = np.full((len(members), 2), -1, np.int64)
    for g, rows in enumerate(members):
        r = rays[rows]
        if not np.isfinite(r).all():
            continue
        cos = r @ r.T
        a, b = np.unravel_index(np.argmin(cos), cos.shape)
        out[g] = rows[a], rows[b]
    return out


def verification_pairs(
    labels: torch.Tensor | np.ndarray,
    num_pairs: int,
    seed: int = 0,
    positive_fraction: float = 0.5,
    groups: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random verification pairs for FPR95 / AP: matching pairs (two views of one identity) and non-matching pairs.

    Like UBC's ``m50_*`` files: about ``positive_fraction`` of the pairs match; a positive pair is two distinct
    views of a random identity with >= 2 views, a negative pair is two samples of different identities. With
    ``groups`` (N,) (e.g. the source photo of each patch), a negative pair's two samples come from the same group,
    which makes negatives harder (same texture, same lighting); a group needs >= 2 identities.

    Returns:
        (index1 (M,), index2 (M,), is_match (M,) int64) with M = ``num_pairs``.
    """
    lab = _as_numpy_labels(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(lab, kind="stable")
    uniq, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    multi = np.flatnonzero(counts >= 2)
    if len(multi) == 0 or len(uniq) < 2:
        raise ValueError("need at least one identity with two views and two identities")
    n_pos = int(round(num_pairs * positive_fraction))
    n_neg = num_pairs - n_pos
    ids = rng.choice(multi, n_pos, replace=True)
    off1 = (rng.random(n_pos) * counts[ids]).astype(np.int64)
    off2 = (off1 + 1 + (rng.random(n_pos) * (counts[ids] - 1)).astype(np.int64)) % counts[ids]
    pos1 = order[starts[ids] + off1]
    pos2 = order[starts[ids] + off2]
    if groups is None:
        grp = np.zeros(lab.size, np.int64)
    else:
        grp = _as_numpy_labels(groups)
        if grp.shape != lab.shape:
            raise ValueError("groups must have one entry per label")
    g_order = np.argsort(grp, kind="stable")
    g_uniq, g_starts, g_counts = np.unique(grp[g_order], return_index=True, return_counts=True)
    ok_group = np.array([len(np.unique(lab[g_order[s : s + c]])) >= 2 for s, c in zip(g_starts, g_counts)])
    if not ok_group.any():
        raise ValueError("no group has two identities")
    eligible = np.flatnonzero(ok_group[np.searchsorted(g_uniq, grp)])
    neg1 = rng.choice(eligible, n_neg, replace=True)
    gi = np.searchsorted(g_uniq, grp[neg1])

    def draw(mask_idx: np.ndarray) -> np.ndarray:
        off = (rng.random(mask_idx.size) * g_counts[gi[mask_idx]]).astype(np.int64)
        return g_order[g_starts[gi[mask_idx]] + off]

    neg2 = draw(np.arange(n_neg))
    clash = lab[neg1] == lab[neg2]
    while clash.any():
        neg2[clash] = draw(np.flatnonzero(clash))
        clash = lab[neg1] == lab[neg2]
    idx1 = np.concatenate([pos1, neg1])
    idx2 = np.concatenate([pos2, neg2])
    match = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    perm = rng.permutation(num_pairs)
    return idx1[perm], idx2[perm], match[perm]
