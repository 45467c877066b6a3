"""Image retrieval with no downloaded model: VLAD over a codebook of the collection's own local descriptors.

Pairs for large collections: each image is matched only with the ``k`` images most similar to it, so matching
costs O(N k) pairs instead of N (N - 1) / 2. The similarity is the cosine of global descriptors that each image
gets from its own local descriptors (the run's features.h5), computed in three steps:

1. **Codebook**: k-means (OpenCV ``cv2.kmeans``, k-means++ seeding, OpenCV's RNG seeded) on a bounded sample of
   the collection's descriptors: at most ``max_images`` images spread evenly over the sorted names, the same
   number of randomly drawn descriptors from each (``max_samples`` = 32,768 in all, 25 iterations).
   OpenCV is already a dependency and, with the sample bounded, k-means takes about 2 s here (32,768 x 128
   against 64 words); scikit-learn (MiniBatchKMeans) or faiss would add a dependency for no gain at that size.
2. **VLAD** per image (Jégou et al. 2010, with the normalisations of Arandjelović & Zisserman, "All about VLAD",
   2013): each local descriptor is assigned to its nearest word; per word, the sum of residuals
   ``x - c_word``; signed square root (power law 0.5, damps bursts of repeated structure); each word's block
   L2-normalised (intra-normalisation); the whole vector L2-normalised. Stored as float16.
3. **Top-k**: dot products of ``block`` query rows against all N (in column chunks of ``block`` rows); in each
   row the k best other images, ties to the lower index (a partition, then a stable sort of the few
   candidates). Pairs are the symmetric union: ``(i, j)`` is kept if j is among i's k or i among j's k, so at
   most N k pairs.

Memory, for N images, W words and D-dimensional local descriptors: codebook W x D float32 (64 x 128: 32 KiB);
index N x W D float16 (N = 10,000, W = 64, D = 128: 156 MiB); the search adds a ``block`` x N float32 score
block (512 x 10,000: 20 MiB) and float32 copies of ``block`` index rows (16 MiB each). Never an N x N matrix.
Time: one descriptor read per image (plus at most ``max_images`` for the sample), the VLAD of each image, and
N^2 W D multiply-adds for the search (N = 10,000: 8e11). Measured time and memory (``bench/retrieval.py
--synthetic``): bench/RESULTS.md.

Deterministic: the sample, k-means and the sort depend only on the names, the descriptors and ``seed``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from matcher.errors import ConfigError

__all__ = [
    "learn_codebook", "vlad", "global_descriptors", "top_k_neighbours", "pairs_from_neighbours", "retrieval_pairs",
]

ReadDescriptors = Callable[[str], np.ndarray]
"""name -> the image's local descriptors, (n, D) float32."""


def _sample_names(names: Sequence[str], max_images: int) -> list[str]:
    """At most ``max_images`` names spread evenly over ``names`` (all of them when there are fewer)."""
    if len(names) <= max_images:
        return list(names)
    index = np.unique(np.linspace(0, len(names) - 1, max_images).round().astype(int))
    return [names[i] for i in index]


def learn_codebook(
    names: Sequence[str],
    read: ReadDescriptors,
    words: int = 64,
    seed: int = 0,
    max_images: int = 1000,
    max_samples: int = 32768,
    iterations: int = 25,
) -> np.ndarray:
    """k-means codebook (words, D) float32 on a bounded, seeded sample of the images' descriptors."""
    chosen = _sample_names(sorted(names), max_images)
    per_image = max(1, -(-max_samples // len(chosen)))  # ceil
    rng = np.random.default_rng(seed)
    sample = []
    for name in chosen:
        descriptors = np.asarray(read(name), np.float32)
        if len(descriptors) > per_image:
            descriptors = descriptors[np.sort(rng.choice(len(descriptors), per_image, replace=False))]
        sample.append(descriptors)
    data = np.ascontiguousarray(np.concatenate(sample))
    words = min(words, len(data))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, iterations, 1e-4)
    _, _, centres = cv2.kmeans(data, words, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    return centres.astype(np.float32)


def vlad(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """VLAD of one image: (n, D) local descriptors, (W, D) codebook -> (W * D,) float32 unit vector.

    Residual sums per nearest word, signed square root, intra-normalisation, global L2 normalisation (an image
    without descriptors gives the zero vector, similar to nothing).
    """
    x = np.asarray(descriptors, np.float32)
    words, dim = codebook.shape
    if len(x) == 0:
        return np.zeros(words * dim, np.float32)
    # nearest word: argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
    nearest = np.argmax(x @ codebook.T - 0.5 * np.einsum("wd,wd->w", codebook, codebook), axis=1)
    one_hot = np.zeros((len(x), words), np.float32)
    one_hot[np.arange(len(x)), nearest] = 1.0
    residuals = one_hot.T @ x - one_hot.sum(0)[:, None] * codebook  # (W, D)
    residuals = np.sign(residuals) * np.sqrt(np.abs(residuals))
    norms = np.linalg.norm(residuals, axis=1, keepdims=True)
    residuals = np.divide(residuals, norms, out=np.zeros_like(residuals), where=norms > 0)
    v = residuals.reshape(-1)
    total = np.linalg.norm(v)
    return v / total if total > 0 else v


def global_descriptors(names: Sequence[str], read: ReadDescriptors, codebook: np.ndarray) -> np.ndarray:
    """(N, W * D) float16 unit VLAD rows, in the order of ``names`` (one descriptor read per image)."""
    out = np.empty((len(names), codebook.size), np.float16)
    for i, name in enumerate(names):
        out[i] = vlad(read(name), codebook)
    return out


def top_k_neighbours(index: np.ndarray, k: int, block: int = 512) -> np.ndarray:
    """(N, M) global descriptors -> (N, min(k, N - 1)) int64: each row's most similar other rows, best first.

    Dot products for ``block`` rows at a time (a ``block`` x N float32 matrix, filled in column chunks of
    ``block`` rows of the index converted to float32); ties go to the lower index (stable sort), so the result
    depends only on the input.
    """
    n = len(index)
    k = min(k, n - 1)
    out = np.empty((n, max(k, 0)), np.int64)
    if k <= 0:
        return out
    scores = np.empty((min(block, n), n), np.float32)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        rows = index[r0:r1].astype(np.float32)
        for c0 in range(0, n, block):
            c1 = min(c0 + block, n)
            scores[: r1 - r0, c0:c1] = rows @ index[c0:c1].astype(np.float32).T  # BLAS needs a contiguous output
        s = scores[: r1 - r0]
        s[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf  # not its own neighbour
        kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]  # each row's k-th largest score
        for r, row in enumerate(s):
            candidates = np.flatnonzero(row >= kth[r])  # the k best and any ties with the k-th, by index
            out[r0 + r] = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
    return out


def pairs_from_neighbours(names: Sequence[str], neighbours: np.ndarray) -> list[tuple[str, str]]:
    """(N, k) neighbour indices into ``names`` -> the symmetric union of pairs, sorted ``(a, b)`` with a < b."""
    pairs = set()
    for i, row in enumerate(neighbours):
        for j in row:
            a, b = names[i], names[int(j)]
            pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs)


def retrieval_pairs(
    names: Sequence[str],
    read: ReadDescriptors,
    k: int,
    words: int = 64,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Each image with its ``k`` most similar images (VLAD cosine), symmetric union; sorted ``(a, b)``, a < b."""
    if k < 1:
        raise ConfigError(f"pairs.retrieval_k must be at least 1, got {k}")
    if words < 1:
        raise ConfigError(f"pairs.retrieval_words must be at least 1, got {words}")
    names = sorted(names)
    if len(names) < 2:
        return []
    codebook = learn_codebook(names, read, words=words, seed=seed)
    return pairs_from_neighbours(names, top_k_neighbours(global_descriptors(names, read, codebook), k))
