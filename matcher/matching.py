"""Mutual nearest-neighbour matching of unit descriptors, in blocks so memory stays bounded.

For N1 x N2 descriptors the full similarity matrix is never held:

1. rows of the first image are processed ``block_size`` at a time: a (block, N2) similarity product gives each
   row's ``CANDIDATES`` most similar columns, whose similarities are then recomputed exactly in float32; the
   best two give the nearest neighbour and Lowe's ratio test;
2. the rows that pass the ratio test propose their best column; only those columns are searched against every
   row of the first image the same way, which gives the best row of each proposed column; a match is mutual
   when that row is the proposer.

``precision``: the similarity product runs in bfloat16 where the processor multiplies bfloat16 natively
(AVX512-BF16 or AMX; ``auto``; speed in bench/RESULTS.md, "Figures behind the defaults"). bfloat16
similarities are only good to about 0.01, so they only *propose* candidates; every similarity that decides a
match (nearest, second nearest, the reverse check, the stored score) is the float32 dot product of the
candidates. A decision can differ from the all-float32 search only when more than ``CANDIDATES`` columns lie
within about 0.01 of the best, where the ratio test rejects the row anyway (the agreement measured on Lund is
in bench/RESULTS.md).

Reductions run in NumPy (repeated SIMD ``argmax``), several times faster than torch's ``max``/``topk`` with
indices on this CPU; the product runs in torch (oneDNN). Peak extra memory is ``block_size * max(N1, N2) * 6``
bytes. The result depends only on the inputs, the configuration and the processor's bfloat16 support.

``engine = "numpy"`` (:class:`matcher.config.MatchingConfig`; ``auto`` picks it for small runs on features
described by the OpenVINO engine, see :func:`resolve_matching_engine`) is the same search without torch: float32
products by OpenCV's ``cv2.gemm`` (single-threaded per call, so parallel pairs do not oversubscribe the cores the
way NumPy's threaded BLAS does) and the two best columns read straight off them, no re-scoring needed. It gives
the all-float32 answer (the same matches as torch's on every real pair measured) and a small run that describes
without torch then never imports it (start-up, bench/two_image_job.py); its products are 3-4x slower than
torch's bfloat16 ones on a CPU with AMX, so large runs keep torch.

Every array larger than a few KiB lives in a per-thread workspace that is reused from pair to pair and only
grows: allocating and freeing a dozen multi-MiB blocks per pair made glibc's heap fragment, and the process
RSS of a 29-image run double (bench/memory_scaling.py).

Keypoints described at several orientations (``extras1`` / ``extras2``: ``detection.max_orientations`` > 1) are
matched by :mod:`matcher.oriented_matching`: the similarity of two keypoints is the maximum over their
orientations, then the same ratio test and mutual check. Without extra rows this module's search runs, unchanged.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from matcher.config import MatchingConfig
from matcher.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "mutual_nearest_neighbours", "similarity_dtype", "similarity_precision", "native_bf16", "resolve_matching_engine",
    "CANDIDATES", "MATCHING_ENGINES", "NUMPY_MAX_PAIRS", "Extras",
]

MATCHING_ENGINES = ("auto", "torch", "numpy")

CANDIDATES = 4
"""Columns per row proposed by the (possibly bfloat16) product and re-scored in float32."""


class _Workspace(threading.local):
    """Named buffers reused across calls (one set per thread); a buffer is reallocated only to grow."""

    def __init__(self) -> None:
        self.buffers: dict[str, Any] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` backed by the buffer ``name``."""
        import torch

        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < size:
            buffer = self.buffers[name] = torch.empty(max(size, 1), dtype=dtype)
        return buffer[:size].view(shape)

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised contiguous float32 array of ``shape`` backed by the buffer ``name``."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if not isinstance(buffer, np.ndarray) or buffer.size < size:
            buffer = self.buffers[name] = np.empty(max(size, 1), np.float32)
        return buffer[:size].reshape(shape)


_workspace = _Workspace()


def _linux_cpu_flags() -> set[str] | None:
    """The ``flags`` of /proc/cpuinfo (None where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


@functools.cache
def native_bf16() -> bool:
    """Whether this processor multiplies bfloat16 natively (x86 AVX512-BF16 or AMX tiles).

    Read from /proc/cpuinfo's flags on Linux (the same CPUID bits torch's probe reads, without importing torch);
    elsewhere torch's probe."""
    flags = _linux_cpu_flags()
    if flags is not None:
        return "avx512_bf16" in flags or "amx_tile" in flags
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private torch API: absent means unknown, so no
        return False


def similarity_precision(precision: str) -> str:
    """``fp32`` | ``bf16`` | ``auto`` -> ``fp32`` or ``bf16``, the precision of the candidate-proposing product."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    raise ConfigError(f"matching.precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")


def similarity_dtype(precision: str) -> torch.dtype:
    """``fp32`` | ``bf16`` | ``auto`` -> the torch dtype of the candidate-proposing product."""
    import torch

    return torch.bfloat16 if similarity_precision(precision) == "bf16" else torch.float32


NUMPY_MAX_PAIRS = 36
"""``matching.engine = "auto"`` matches runs of at most this many pairs (9 images, exhaustive) without torch.
Importing torch costs about 2 s (4x that under load); torch's bfloat16 product saves about 0.2 s per pair of
4,096 keypoints under load (lund, 66 pairs: 31.5 s with numpy, 17.1 s with torch; bench/RESULTS.md)."""


def resolve_matching_engine(engine: str, precision: str, descriptor_engine: str | None,
                            pairs: int | None = None) -> str:
    """The matching engine that runs: ``torch`` or ``numpy``.

    ``auto``: ``numpy`` for a run of at most :data:`NUMPY_MAX_PAIRS` ``pairs`` whose features were described
    without torch (``descriptor_engine`` ``openvino``, the resolved engine recorded with the features), unless
    ``precision`` asks for ``bf16``; else ``torch``. So the choice follows the configuration and the inputs
    (never what happens to be imported or cached), and is recorded in the matches file's fingerprint.
    """
    if engine not in MATCHING_ENGINES:
        raise ConfigError(f"matching.engine must be one of {', '.join(MATCHING_ENGINES)}, not {engine!r}")
    if engine == "numpy" and precision == "bf16":
        raise ConfigError("matching.engine = 'numpy' computes float32 products; matching.precision = 'bf16' "
                          "needs engine 'torch' (or 'auto')")
    if engine != "auto":
        return engine
    small = pairs is not None and pairs <= NUMPY_MAX_PAIRS
    return "numpy" if small and descriptor_engine == "openvino" and precision != "bf16" else "torch"


Extras = tuple[np.ndarray, np.ndarray]
"""Extra orientation rows of an image's keypoints: descriptors (M, D) float32 unit rows, keypoint index (M,) int."""


def mutual_nearest_neighbours(
    desc1: np.ndarray, desc2: np.ndarray, config: MatchingConfig | None = None,
    extras1: Extras | None = None, extras2: Extras | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match two sets of unit descriptors.

    Args:
        desc1: (N1, D) float32, unit rows.
        desc2: (N2, D) float32, unit rows.
        config: ``ratio`` (0: off) is Lowe's test on L2 distances, ``block_size`` the rows per block,
            ``precision`` of the candidate search, ``threads`` for torch while matching, ``engine``: ``numpy``
            runs the float32 search without torch (``auto`` and ``torch``: torch).
        extras1, extras2: further orientations of some keypoints (:attr:`matcher.storage.ImageFeatures.extras`),
            or None; with any, the similarity of two keypoints is the max over their orientations
            (:mod:`matcher.oriented_matching`).

    Returns:
        matches (M, 2) int32 ``[i1, i2]`` sorted by i1, and scores (M,) float32 cosine similarities.
    """
    config = config or MatchingConfig()
    n1, n2 = desc1.shape[0], desc2.shape[0]
    if n1 == 0 or n2 == 0:
        return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
    engine = getattr(config, "engine", "auto")
    if (extras1 is not None and len(extras1[1])) or (extras2 is not None and len(extras2[1])):
        return _match_oriented(desc1, desc2, config, extras1, extras2)
    if engine == "numpy":
        resolve_matching_engine(engine, config.precision, None)  # bf16 with numpy: ConfigError
        return _match_numpy(np.ascontiguousarray(desc1, dtype=np.float32), np.ascontiguousarray(desc2, dtype=np.float32),
                            max(1, config.block_size), config.ratio if n2 > 1 else 0.0)
    import torch

    d1 = torch.from_numpy(np.ascontiguousarray(desc1, dtype=np.float32))
    d2 = torch.from_numpy(np.ascontiguousarray(desc2, dtype=np.float32))
    dtype = similarity_dtype(config.precision)
    previous_threads = torch.get_num_threads()
    change_threads = 0 < config.threads != previous_threads  # callers that already set them (workers) skip this
    if change_threads:
        torch.set_num_threads(config.threads)
    try:
        with torch.inference_mode():
            return _match(d1, d2, dtype, max(1, config.block_size), config.ratio if n2 > 1 else 0.0)
    finally:
        if change_threads:
            torch.set_num_threads(previous_threads)


def _match_oriented(desc1: np.ndarray, desc2: np.ndarray, config: MatchingConfig, extras1: Extras | None,
                    extras2: Extras | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mutual_nearest_neighbours` with extra orientation rows (:mod:`matcher.oriented_matching`)."""
    from matcher.oriented_matching import OrientedDescriptors, oriented_match

    a = OrientedDescriptors.build(desc1, *(extras1 or (None, None)))
    b = OrientedDescriptors.build(desc2, *(extras2 or (None, None)))
    ratio, block = config.ratio if b.n > 1 else 0.0, max(1, config.block_size)
    if getattr(config, "engine", "auto") == "numpy":
        resolve_matching_engine("numpy", config.precision, None)  # bf16 with numpy: ConfigError
        return oriented_match(a, b, ratio, block, None, CANDIDATES)
    import torch

    previous_threads = torch.get_num_threads()
    change_threads = 0 < config.threads != previous_threads
    if change_threads:
        torch.set_num_threads(config.threads)
    try:
        with torch.inference_mode():
            return oriented_match(a, b, ratio, block, similarity_dtype(config.precision), CANDIDATES)
    finally:
        if change_threads:
            torch.set_num_threads(previous_threads)


def _match(d1: torch.Tensor, d2: torch.Tensor, dtype: torch.dtype, block: int,
           ratio: float) -> tuple[np.ndarray, np.ndarray]:
    import torch

    fast1 = _workspace.tensor("fast1", d1.shape, dtype).copy_(d1)
    fast2 = _workspace.tensor("fast2", d2.shape, dtype).copy_(d2)
    fast2_t = _workspace.tensor("fast_t", d2.shape[::-1], dtype).copy_(fast2.T)
    sims, cols = _nearest_two(d1, fast1, d2, fast2_t, block)  # (N1, 2) each
    candidates = _passing_ratio(sims, ratio)
    columns = np.unique(cols[candidates, 0])
    col_best_row = np.full(len(d2), -1, dtype=np.int64)
    if len(columns):
        fast1_t = _workspace.tensor("fast_t", d1.shape[::-1], dtype).copy_(fast1.T)
        _, rows = _nearest_two(d2[columns], fast2[columns], d1, fast1_t, block)
        col_best_row[columns] = rows[:, 0]
    return _mutual_matches(candidates, sims, cols, col_best_row)


def _passing_ratio(sims: np.ndarray, ratio: float) -> np.ndarray:
    """Rows whose nearest neighbour passes the ratio test: sims (N, 2) descending -> row indices (M,)."""
    if ratio <= 0:
        return np.arange(len(sims))
    # squared L2 distances of unit vectors: d² = 2 - 2 s (no square roots needed)
    nearest = np.maximum(2.0 - 2.0 * sims[:, 0], 0.0)
    second = np.maximum(2.0 - 2.0 * sims[:, 1], 0.0)
    return np.flatnonzero(nearest <= ratio**2 * second)


def _mutual_matches(candidates: np.ndarray, sims: np.ndarray, cols: np.ndarray,
                    col_best_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates whose nearest column names them back: (M, 2) int32 index pairs and (M,) similarities."""
    mutual = candidates[col_best_row[cols[candidates, 0]] == candidates]
    matches = np.stack([mutual, cols[mutual, 0]], axis=1).astype(np.int32)
    return matches, sims[mutual, 0].astype(np.float32)


def _nearest_two(queries: torch.Tensor, queries_fast: torch.Tensor, base: torch.Tensor, base_fast_t: torch.Tensor,
                 block: int) -> tuple[np.ndarray, np.ndarray]:
    """The two base rows most similar to each query row.

    Args:
        queries: (Q, D) float32; queries_fast: the same in the proposal dtype.
        base: (B, D) float32; base_fast_t: (D, B) the transposed base in the proposal dtype, contiguous.

    Returns:
        similarities (Q, 2) float32, descending (the second is -inf when B = 1), and indices (Q, 2) int64.
    """
    import torch

    q, b = len(queries), len(base)
    k = min(CANDIDATES, b)
    sims = np.full((q, 2), -np.inf, dtype=np.float32)
    index = np.zeros((q, 2), dtype=np.int64)
    product = _workspace.tensor("product", (min(block, q), b), base_fast_t.dtype)
    proposal = product if product.dtype == torch.float32 else _workspace.tensor("proposal", product.shape, torch.float32)
    for start in range(0, q, block):
        stop = min(start + block, q)
        rows = stop - start
        torch.mm(queries_fast[start:stop], base_fast_t, out=product[:rows])
        if proposal is not product:
            proposal[:rows].copy_(product[:rows])
        candidates = torch.from_numpy(_top_columns(proposal[:rows].numpy(), k))  # (rows, k)
        exact = torch.einsum("qd,qkd->qk", queries[start:stop], base[candidates])  # (rows, k) float32
        top = exact.topk(min(2, k), dim=1)
        width = top.values.shape[1]
        sims[start:stop, :width] = top.values.numpy()
        index[start:stop, :width] = candidates.gather(1, top.indices).numpy()
    return sims, index


def _match_numpy(d1: np.ndarray, d2: np.ndarray, block: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_match` with float32 products (``cv2.gemm``) and no torch: (N1, D), (N2, D) -> matches, scores."""
    d2_t = _workspace.array("np_t", d2.shape[::-1])
    d2_t[...] = d2.T
    sims, cols = _nearest_two_numpy(d1, d2_t, block)
    candidates = _passing_ratio(sims, ratio)
    columns = np.unique(cols[candidates, 0])
    col_best_row = np.full(len(d2), -1, dtype=np.int64)
    if len(columns):
        d1_t = _workspace.array("np_t", d1.shape[::-1])
        d1_t[...] = d1.T
        _, rows = _nearest_two_numpy(np.ascontiguousarray(d2[columns]), d1_t, block)
        col_best_row[columns] = rows[:, 0]
    return _mutual_matches(candidates, sims, cols, col_best_row)


def _nearest_two_numpy(queries: np.ndarray, base_t: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The two base columns most similar to each query row: (Q, D) and (D, B) float32 -> similarities (Q, 2)
    float32 descending (the second -inf when B = 1) and indices (Q, 2) int64."""
    q, b = len(queries), base_t.shape[1]
    sims = np.full((q, 2), -np.inf, dtype=np.float32)
    index = np.zeros((q, 2), dtype=np.int64)
    product = _workspace.array("np_product", (min(block, q), b))
    for start in range(0, q, block):
        stop = min(start + block, q)
        rows = np.arange(stop - start)
        p = product[: stop - start]
        cv2.gemm(queries[start:stop], base_t, 1.0, None, 0.0, dst=p)
        for j in range(min(2, b)):
            best = p.argmax(axis=1)
            sims[start:stop, j] = p[rows, best]
            index[start:stop, j] = best
            p[rows, best] = -np.inf
    return sims, index


def _top_columns(similarity: np.ndarray, k: int) -> np.ndarray:
    """(R, C) float32 -> (R, k) int64 columns of the k largest values per row (overwrites ``similarity``)."""
    rows = np.arange(similarity.shape[0])
    columns = np.empty((similarity.shape[0], k), dtype=np.int64)
    for j in range(k):
        columns[:, j] = similarity.argmax(axis=1)
        similarity[rows, columns[:, j]] = -np.inf
    return columns
