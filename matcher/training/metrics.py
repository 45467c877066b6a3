"""Patch-verification metrics: FPR at 95% recall (UBC PhotoTour) and average precision (HPatches-style).

Both take a binary ``labels`` array (1 = matching pair) and ``scores`` (higher = more similar, e.g. the dot
product of two unit descriptors) as numpy arrays and return a Python float.

Ties between scores are broken by input order (a stable sort on decreasing score), as a plain ``argsort`` based
implementation of the released SDGMNet/HardNet evaluation would do; see shared/docs/methods.md §1.7.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["average_precision", "fpr_at_recall", "fpr95", "mean_average_precision", "verification_metrics"]


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape} vs {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return labels.astype(bool), scores


def fpr_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float = 0.95) -> float:
    """False-positive rate at the first threshold whose recall reaches ``recall``.

    Sort the pairs by decreasing score; find the smallest (0-based) index ``k`` where the cumulative count of
    positives reaches ``recall · P`` (P = number of positives). Pairs ``0..k`` are predicted matches, so
    FP = negatives among them and TN = negatives after ``k``; the result is FP / (FP + TN).
    (shared/docs/methods.md §1.7 and test vector T-U1: scores [0.9, 0.8, 0.7, 0.6, 0.5] with labels
    [1, 0, 1, 1, 0] give 0.5.)

    Args:
        labels: (M,) 1 for matching pairs, 0 otherwise.
        scores: (M,) similarity, higher means more likely a match.
        recall: the target true-positive rate, in (0, 1].

    Returns:
        the false-positive rate in [0, 1].

    Raises:
        ValueError: if there is no positive or no negative pair, or ``recall`` is outside (0, 1].
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    labels, scores = _check(labels, scores)
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("FPR needs at least one positive and one negative pair")
    order = np.argsort(-scores, kind="stable")
    lab = labels[order]
    cum_pos = np.cumsum(lab)
    # A small tolerance so that e.g. 0.95 * 20 = 19.000000000000004 is reached by 19 positives.
    k = int(np.argmax(cum_pos >= recall * n_pos - 1e-9))
    false_pos = int(np.count_nonzero(~lab[: k + 1]))
    true_neg = n_neg - false_pos
    return float(false_pos / (false_pos + true_neg))


def fpr95(labels: np.ndarray, scores: np.ndarray) -> float:
    """FPR at 95% recall (UBC PhotoTour's FPR95), a fraction in [0, 1] (multiply by 100 for %)."""
    return fpr_at_recall(labels, scores, 0.95)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Non-interpolated average precision of ranking the pairs by decreasing score.

    AP = (1/P) Σ_k precision@k · 1[pair k is positive], the mean of the precision at each positive's rank
    (the hpatches-benchmark definition of a verification task's AP).

    Raises:
        ValueError: if there is no positive pair.
    """
    labels, scores = _check(labels, scores)
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive pair")
    order = np.argsort(-scores, kind="stable")
    lab = labels[order]
    cum_pos = np.cumsum(lab)
    precision = cum_pos / np.arange(1, lab.size + 1)
    return float(precision[lab].sum() / n_pos)


def mean_average_precision(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> float:
    """Mean of :func:`average_precision` over several groups (e.g. sequences); groups without positives are skipped.

    Raises:
        ValueError: if no group has a positive pair.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores must have the same number of groups")
    aps = [average_precision(lab, sc) for lab, sc in zip(labels, scores) if np.asarray(lab).astype(bool).any()]
    if not aps:
        raise ValueError("no group has a positive pair")
    return float(np.mean(aps))


def verification_metrics(
    describe: Callable[[np.ndarray], "torch.Tensor"],
    labels: "torch.Tensor",
    groups: "torch.Tensor",
    num_pairs: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """FPR95 and AP of the patch-verification benchmark: ``num_pairs`` pairs (half matching; a non-matching pair
    is two identities of the same group, e.g. the same image) from
    :func:`~matcher.training.sampler.verification_pairs`, scored by cosine similarity.

    Args:
        describe: row indices (M,) -> their descriptors (M, D), unit rows; called once, with the rows the pairs use.
        labels, groups: (N,) identity and group of every patch.
    """
    import torch

    from matcher.training.sampler import verification_pairs

    i1, i2, is_match = verification_pairs(labels, num_pairs, seed=seed, groups=groups)
    needed = np.unique(np.concatenate([i1, i2]))
    rows = np.full(len(labels), -1)
    rows[needed] = np.arange(len(needed))
    d = describe(needed)
    scores = (d[torch.from_numpy(rows[i1])] * d[torch.from_numpy(rows[i2])]).sum(1).numpy()
    return {"fpr95": fpr95(is_match, scores), "ap": average_precision(is_match, scores)}
