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
element-wise maxima. The keypoints are permuted internally (those with the most extra rows first, each rank's
extra rows in the same order) so that every fold is one ``np.maximum`` of two slices: no gather or scatter
(a fancy-indexed fold took longer than the product itself). The torch engine re-scores its ``CANDIDATES`` proposals exactly in
float32 as the single-orientation search does, over every orientation pair (descriptors padded to K orientations
per keypoint with copies of the primary, which leaves a maximum unchanged); the numpy engine's products are float32
already. Cost: about (1 + M1/N1)(1 + M2/N2) times the products of the single-orientation search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["OrientedDescriptors", "oriented_match"]


@dataclass
class OrientedDescriptors:
    """N keypoints' descriptors at one or more orientations, laid out so that every fold is a slice.

    Keypoints are permuted by decreasing number of extra rows (``perm`` (N,): position -> keypoint), so the
    keypoints with an r-th extra row are the first ``sizes[r]``. ``rows`` (N + M, D) float32: the N primary
    descriptors in that order, then the extra rows of rank 0 of positions 0..sizes[0]-1, then those of rank 1, ...
    ``primary`` (N, D), ``extra`` (M, D) and ``owner`` (M,): the keypoints as given (for :meth:`subset`).
    """

    rows: np.ndarray
    perm: np.ndarray
    sizes: list[int]
    primary: np.ndarray
    extra: np.ndarray
    owner: np.ndarray

    @classmethod
    def build(cls, primary: np.ndarray, extra: np.ndarray | None, owner: np.ndarray | None) -> OrientedDescriptors:
        """From (N, D) primary descriptors and (M, D) extra ones of keypoints ``owner`` (M,) (any order)."""
        primary = np.asarray(primary, np.float32)
        if extra is None or owner is None or len(owner) == 0:
            extra, owner = np.zeros((0, primary.shape[1]), np.float32), np.zeros(0, np.int64)
        extra, owner = np.asarray(extra, np.float32), np.asarray(owner, np.int64)
        if owner.size and (owner.min() < 0 or owner.max() >= len(primary)):
            raise ValueError(f"extra orientation rows name keypoints outside 0..{len(primary) - 1}")
        counts = np.bincount(owner, minlength=len(primary))
        perm = np.argsort(-counts, kind="stable")
        position = np.empty(len(primary), np.int64)
        position[perm] = np.arange(len(primary))
        by_owner = np.argsort(owner, kind="stable")
        rank = np.empty(len(owner), np.int64)
        rank[by_owner] = np.arange(len(owner)) - np.searchsorted(owner[by_owner], owner[by_owner], side="left")
        parts, sizes = [primary[perm]], []
        for r in range(int(counts.max(initial=0))):
            mine = np.flatnonzero(rank == r)
            mine = mine[np.argsort(position[owner[mine]])]  # positions 0..sizes[r]-1, in order
            parts.append(extra[mine])
            sizes.append(len(mine))
        return cls(np.ascontiguousarray(np.concatenate(parts)), perm, sizes, primary, extra, owner)

    @property
    def n(self) -> int:
        return len(self.perm)

    def offsets(self) -> list[int]:
        """Row index in ``rows`` where each rank's extra rows start."""
        return [self.n + int(x) for x in np.cumsum([0, *self.sizes[:-1]])] if self.sizes else []

    def subset(self, keypoints: np.ndarray) -> OrientedDescriptors:
        """The keypoints ``keypoints`` (original indices, unique), renumbered 0..len-1, with their extra rows."""
        position = np.full(self.n, -1, np.int64)
        position[keypoints] = np.arange(len(keypoints))
        keep = position[self.owner] >= 0
        return OrientedDescriptors.build(self.primary[keypoints], self.extra[keep], position[self.owner[keep]])

    def block_rows(self, start: int, stop: int) -> list[slice]:
        """Slices of ``rows`` holding positions ``start:stop`` then their extra rows of rank 0, 1, ..."""
        out = [slice(start, stop)]
        for offset, size in zip(self.offsets(), self.sizes):
            if start < size:
                out.append(slice(offset + start, offset + min(stop, size)))
        return out

    def padded(self) -> np.ndarray:
        """(N, K, D) in position order: each keypoint's K = 1 + max extras orientations, the missing ones copies
        of the primary (which leaves a maximum unchanged)."""
        out = np.repeat(self.rows[: self.n, None, :], 1 + len(self.sizes), axis=1)
        for r, (offset, size) in enumerate(zip(self.offsets(), self.sizes)):
            out[:size, r + 1] = self.rows[offset : offset + size]
        return out


def _numpy_maximum(into: np.ndarray, other: np.ndarray) -> None:
    np.maximum(into, other, out=into)


def fold_orientations(product: Any, queries: OrientedDescriptors, start: int, stop: int,
                      base: OrientedDescriptors, maximum: Callable[[Any, Any], None] = _numpy_maximum) -> Any:
    """Keypoint similarities from a block's row products, in place.

    Args:
        product: (R, N_b + M_b) array or tensor: rows = ``queries.rows[queries.block_rows(start, stop)]`` (in
            order), columns = ``base.rows``.
        maximum: ``maximum(into, other)`` sets ``into`` to the element-wise maximum (NumPy's or torch's).

    Returns:
        (stop - start, N_b) view of ``product``: positions ``start:stop`` of the queries against the base's
        positions, the max over both keypoints' orientations.
    """
    nb, rows = base.n, stop - start
    for offset, size in zip(base.offsets(), base.sizes):
        maximum(product[:, :size], product[:, offset : offset + size])
    at = rows
    for block in queries.block_rows(start, stop)[1:]:
        size = block.stop - block.start
        maximum(product[:size, :nb], product[at : at + size, :nb])
        at += size
    return product[:rows, :nb]


def _unpermute(queries: OrientedDescriptors, base: OrientedDescriptors, sims: np.ndarray, index: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Results per query position with base positions -> per query keypoint with base keypoints."""
    out_sims, out_index = np.empty_like(sims), np.empty_like(index)
    out_sims[queries.perm], out_index[queries.perm] = sims, base.perm[index]
    return out_sims, out_index


def nearest_two_numpy(queries: OrientedDescriptors, base: OrientedDescriptors, block: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The two base keypoints most similar to each query keypoint (float32 products by ``cv2.gemm``).

    Returns:
        similarities (Q, 2) float32 descending (the second -inf when there is one base keypoint), indices (Q, 2)
        int64 of base keypoints, both per query keypoint (original indices).
    """
    q, b = queries.n, base.n
    sims = np.full((q, 2), -np.inf, np.float32)
    index = np.zeros((q, 2), np.int64)
    base_t = np.ascontiguousarray(base.rows.T)
    for start in range(0, q, block):
        stop = min(start + block, q)
        rows = np.concatenate([queries.rows[s] for s in queries.block_rows(start, stop)])
        p = np.ascontiguousarray(fold_orientations(cv2.gemm(rows, base_t, 1.0, None, 0.0), queries, start, stop,
                                                   base))  # contiguous rows: argmax is 3x faster than on the view
        at = np.arange(stop - start)
        for j in range(min(2, b)):
            best = p.argmax(axis=1)
            sims[start:stop, j] = p[at, best]
            index[start:stop, j] = best
            p[at, best] = -np.inf
    return _unpermute(queries, base, sims, index)


def nearest_two_torch(queries: OrientedDescriptors, base: OrientedDescriptors, dtype: torch.dtype, block: int,
                      candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`nearest_two_numpy`, products in ``dtype`` (torch) proposing ``candidates`` keypoints per query,
    re-scored exactly in float32 over every orientation pair."""
    import torch

    from matcher.matching import _top_columns, _workspace

    q, b = queries.n, base.n
    k = min(candidates, b)
    sims = np.full((q, 2), -np.inf, np.float32)
    index = np.zeros((q, 2), np.int64)
    query_fast = torch.from_numpy(queries.rows).to(dtype)
    base_fast_t = torch.from_numpy(base.rows).to(dtype).T.contiguous()
    query_pad, base_pad = torch.from_numpy(queries.padded()), torch.from_numpy(base.padded())
    for start in range(0, q, block):
        stop = min(start + block, q)
        product = torch.mm(torch.cat([query_fast[s] for s in queries.block_rows(start, stop)]), base_fast_t)
        folded = fold_orientations(product, queries, start, stop, base,
                                   lambda into, other: torch.maximum(into, other, out=into))
        proposal = _workspace.tensor("oriented_proposal", folded.shape, torch.float32).copy_(folded)
        cand = torch.from_numpy(_top_columns(proposal.numpy(), k))  # (rows, k) base positions
        exact = torch.einsum("qod,qkpd->qkop", query_pad[start:stop], base_pad[cand]).amax(dim=(2, 3))
        top = exact.topk(min(2, k), dim=1)
        width = top.values.shape[1]
        sims[start:stop, :width] = top.values.numpy()
        index[start:stop, :width] = cand.gather(1, top.indices).numpy()
    return _unpermute(queries, base, sims, index)


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
