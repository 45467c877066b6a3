"""Mutual nearest neighbours of keypoints described at several orientations (``detection.max_orientations`` > 1).

A keypoint is one location with a primary descriptor and, for some keypoints, extra descriptors of the same patch
at other orientation peaks (:attr:`matcher.detect.Keypoints.extra_orientations`). The similarity of two keypoints
is the maximum over their orientations' descriptors:

    S[i, j] = max over rows r of keypoint i and rows s of keypoint j of  d1[r] . d2[s]

so for unit descriptors the L2 distance of two keypoints is the minimum over their orientations
(``d^2 = 2 - 2 S``), and Lowe's ratio test and the mutual check of :mod:`matcher.matching` run on S unchanged:
nearest and second nearest are two different *locations*, never two orientations of one.

S is never held whole. Each block of keypoints of the first image is multiplied, primary and extra rows at once,
with every row of the second image ((rows, N2 + M2) products, in the proposal precision of :mod:`matcher.matching`),
then the extra columns are folded into their keypoints' columns and the extra rows into their keypoints' rows by
element-wise maxima (one fancy-indexed ``np.maximum`` per orientation rank, each with distinct keypoints, so no
scatter with repeated indices is needed). The torch engine re-scores its ``CANDIDATES`` proposals exactly in
float32 as the single-orientation search does, over every orientation pair (descriptors padded to K orientations
per keypoint with copies of the primary, which leaves a maximum unchanged); the numpy engine's products are float32
already. Cost: about (1 + M1/N1)(1 + M2/N2) times the products of the single-orientation search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["OrientedDescriptors", "oriented_match"]


@dataclass
class OrientedDescriptors:
    """N keypoints' descriptors at one or more orientations.

    ``rows`` (N + M, D) float32: the N primary descriptors, then the M extra ones; ``owner`` (M,) int64 ascending:
    the keypoint of each extra row; ``rank`` (M,) int64: 0 for a keypoint's first extra row, 1 for its second, ...
    """

    rows: np.ndarray
    n: int
    owner: np.ndarray
    rank: np.ndarray

    @classmethod
    def build(cls, primary: np.ndarray, extra: np.ndarray | None, owner: np.ndarray | None) -> OrientedDescriptors:
        """From (N, D) primary descriptors and (M, D) extra ones of keypoints ``owner`` (M,) (any order)."""
        primary = np.asarray(primary, np.float32)
        if extra is None or owner is None or len(owner) == 0:
            extra, owner = np.zeros((0, primary.shape[1]), np.float32), np.zeros(0, np.int64)
        owner = np.asarray(owner, np.int64)
        if owner.size and (owner.min() < 0 or owner.max() >= len(primary)):
            raise ValueError(f"extra orientation rows name keypoints outside 0..{len(primary) - 1}")
        order = np.argsort(owner, kind="stable")
        owner = owner[order]
        rows = np.ascontiguousarray(np.concatenate([primary, np.asarray(extra, np.float32)[order]]))
        rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
        return cls(rows, len(primary), owner, rank)

    @property
    def primary(self) -> np.ndarray:
        return self.rows[: self.n]

    @property
    def extra(self) -> np.ndarray:
        return self.rows[self.n :]

    def subset(self, keypoints: np.ndarray) -> OrientedDescriptors:
        """The keypoints ``keypoints`` (sorted, unique), renumbered 0..len-1, with their extra rows."""
        position = np.full(self.n, -1, np.int64)
        position[keypoints] = np.arange(len(keypoints))
        keep = position[self.owner] >= 0
        return OrientedDescriptors.build(self.rows[keypoints], self.extra[keep], position[self.owner[keep]])

    def padded(self) -> np.ndarray:
        """(N, K, D): each keypoint's K = 1 + max extras orientations, the missing ones copies of the primary."""
        k = 1 + (int(self.rank.max()) + 1 if len(self.rank) else 0)
        out = np.repeat(self.primary[:, None, :], k, axis=1)
        out[self.owner, self.rank + 1] = self.extra
        return out


def fold_orientations(product: np.ndarray, queries: OrientedDescriptors, start: int, stop: int,
                      base: OrientedDescriptors) -> np.ndarray:
    """Keypoint similarities from a block's row products, in place.

    Args:
        product: (R, N_b + M_b) float32: rows = queries' keypoints ``start:stop`` then their extra rows (in
            order), columns = every row of ``base``.
        queries, base: the two images' descriptors.

    Returns:
        (stop - start, N_b) view of ``product``: the max over both keypoints' orientations.
    """
    nb, rows = base.n, stop - start
    for r in range(int(base.rank.max()) + 1 if len(base.rank) else 0):
        extra = np.flatnonzero(base.rank == r)
        cols = base.owner[extra]
        product[:, cols] = np.maximum(product[:, cols], product[:, nb + extra])
    lo, hi = np.searchsorted(queries.owner, [start, stop], side="left")
    owner, rank = queries.owner[lo:hi] - start, queries.rank[lo:hi]
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        extra = np.flatnonzero(rank == r)
        product[owner[extra], :nb] = np.maximum(product[owner[extra], :nb], product[rows + extra, :nb])
    return product[:rows, :nb]


def _query_rows(queries: OrientedDescriptors, start: int, stop: int) -> np.ndarray:
    """Row indices into ``queries.rows`` of keypoints ``start:stop`` then their extra rows."""
    lo, hi = np.searchsorted(queries.owner, [start, stop], side="left")
    return np.r_[start:stop, queries.n + lo : queries.n + hi]


def nearest_two_numpy(queries: OrientedDescriptors, base: OrientedDescriptors, block: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The two base keypoints most similar to each query keypoint (float32 products by ``cv2.gemm``).

    Returns:
        similarities (Q, 2) float32 descending (the second -inf when there is one base keypoint), indices (Q, 2).
    """
    q, b = queries.n, base.n
    sims = np.full((q, 2), -np.inf, np.float32)
    index = np.zeros((q, 2), np.int64)
    base_t = np.ascontiguousarray(base.rows.T)
    for start in range(0, q, block):
        stop = min(start + block, q)
        product = cv2.gemm(np.ascontiguousarray(queries.rows[_query_rows(queries, start, stop)]), base_t, 1.0,
                           None, 0.0)
        p = fold_orientations(product, queries, start, stop, base)
        rows = np.arange(stop - start)
        for j in range(min(2, b)):
            best = p.argmax(axis=1)
            sims[start:stop, j] = p[rows, best]
            index[start:stop, j] = best
            p[rows, best] = -np.inf
    return sims, index


def nearest_two_torch(queries: OrientedDescriptors, base: OrientedDescriptors, dtype: torch.dtype, block: int,
                      candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`nearest_two_numpy`, products in ``dtype`` (torch) proposing ``candidates`` keypoints per query,
    re-scored exactly in float32 over every orientation pair."""
    import torch

    from matcher.matching import _top_columns

    q, b = queries.n, base.n
    k = min(candidates, b)
    sims = np.full((q, 2), -np.inf, np.float32)
    index = np.zeros((q, 2), np.int64)
    query_fast = torch.from_numpy(queries.rows).to(dtype)
    base_fast_t = torch.from_numpy(base.rows).to(dtype).T.contiguous()
    query_pad, base_pad = torch.from_numpy(queries.padded()), torch.from_numpy(base.padded())
    for start in range(0, q, block):
        stop = min(start + block, q)
        product = torch.mm(query_fast[torch.from_numpy(_query_rows(queries, start, stop))], base_fast_t)
        p = fold_orientations(product.float().numpy(), queries, start, stop, base)
        cand = torch.from_numpy(_top_columns(p, k))  # (rows, k)
        exact = torch.einsum("qod,qkpd->qkop", query_pad[start:stop], base_pad[cand]).amax(dim=(2, 3))
        top = exact.topk(min(2, k), dim=1)
        width = top.values.shape[1]
        sims[start:stop, :width] = top.values.numpy()
        index[start:stop, :width] = cand.gather(1, top.indices).numpy()
    return sims, index


def oriented_match(a: OrientedDescriptors, b: OrientedDescriptors, ratio: float, block: int,
                   dtype: torch.dtype | None, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest keypoints under the max-over-orientations similarity, with Lowe's ratio test (0: off).

    ``dtype`` None: the numpy engine (float32 ``cv2.gemm``); else the torch engine's proposal dtype.

    Returns:
        matches (M, 2) int32 ``[i1, i2]`` sorted by i1, scores (M,) float32 (the max cosine similarity).
    """
    from matcher.matching import _mutual_matches, _passing_ratio

    def nearest(queries: OrientedDescriptors, base: OrientedDescriptors) -> tuple[np.ndarray, np.ndarray]:
        if dtype is None:
            return nearest_two_numpy(queries, base, block)
        return nearest_two_torch(queries, base, dtype, block, candidates)

    sims, cols = nearest(a, b)
    passing = _passing_ratio(sims, ratio)
    columns = np.unique(cols[passing, 0])
    col_best_row = np.full(b.n, -1, dtype=np.int64)
    if len(columns):
        _, rows = nearest(b.subset(columns), a)
        col_best_row[columns] = rows[:, 0]
    return _mutual_matches(passing, sims, cols, col_best_row)
