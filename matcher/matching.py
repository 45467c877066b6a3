"""Mutual nearest-neighbour matching of unit descriptors, in row blocks so memory stays bounded.

For N1 x N2 descriptors the full similarity matrix is never held: rows of the first image are processed
``block_size`` at a time (a block x N2 matrix), keeping each row's best and second-best neighbour and a running
best row for every column. Peak extra memory is ``block_size * N2 * 4`` bytes (64 MiB at 2048 x 8192).
"""

from __future__ import annotations

import numpy as np
import torch

from matcher.config import MatchingConfig

__all__ = ["mutual_nearest_neighbours"]


def mutual_nearest_neighbours(
    desc1: np.ndarray, desc2: np.ndarray, config: MatchingConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Match two sets of unit descriptors.

    Args:
        desc1: (N1, D) float32, unit rows.
        desc2: (N2, D) float32, unit rows.
        config: ``ratio`` (0: off) is Lowe's test on L2 distances, ``block_size`` the rows per block.

    Returns:
        matches (M, 2) int32 ``[i1, i2]`` sorted by i1, and scores (M,) float32 cosine similarities.
    """
    config = config or MatchingConfig()
    n1, n2 = desc1.shape[0], desc2.shape[0]
    if n1 == 0 or n2 == 0:
        return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
    d1 = torch.from_numpy(np.ascontiguousarray(desc1, dtype=np.float32))
    d2 = torch.from_numpy(np.ascontiguousarray(desc2, dtype=np.float32))
    need_second = config.ratio > 0 and n2 > 1
    best_col = torch.empty(n1, dtype=torch.long)
    best_sim = torch.empty(n1)
    second_sim = torch.full((n1,), -2.0)
    col_best_sim = torch.full((n2,), -3.0)
    col_best_row = torch.zeros(n2, dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, n1, config.block_size):
            sim = d1[start : start + config.block_size] @ d2.T  # (b, N2)
            if need_second:
                top = sim.topk(2, dim=1)
                best_sim[start : start + sim.shape[0]] = top.values[:, 0]
                second_sim[start : start + sim.shape[0]] = top.values[:, 1]
                best_col[start : start + sim.shape[0]] = top.indices[:, 0]
            else:
                values, indices = sim.max(dim=1)
                best_sim[start : start + sim.shape[0]] = values
                best_col[start : start + sim.shape[0]] = indices
            block_values, block_rows = sim.t().contiguous().max(dim=1)  # faster than a strided max(dim=0)
            better = block_values > col_best_sim  # strict: the first (lowest) row wins ties, as argmax does
            col_best_sim = torch.where(better, block_values, col_best_sim)
            col_best_row = torch.where(better, block_rows + start, col_best_row)
    rows = torch.arange(n1)
    keep = col_best_row[best_col] == rows
    if need_second:
        dist1 = torch.sqrt(torch.clamp(2.0 - 2.0 * best_sim, min=0.0))
        dist2 = torch.sqrt(torch.clamp(2.0 - 2.0 * second_sim, min=0.0))
        keep &= dist1 <= config.ratio * dist2
    idx = rows[keep]
    matches = torch.stack([idx, best_col[idx]], dim=1).numpy().astype(np.int32)
    return matches, best_sim[idx].numpy().astype(np.float32)
