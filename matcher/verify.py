"""Geometric verification of one pair with OpenCV's USAC (MAGSAC++).

A fundamental matrix F and a homography H are both fitted to the matches. As in COLMAP's two-view
estimator, the inliers are F's, and the pair is labelled ``planar`` (COLMAP's PLANAR_OR_PANORAMIC) when H
explains at least ``homography_ratio`` of F's inliers. H is fitted with twice the threshold: its residual is
a 2-D transfer error, F's a distance to a line, and on the planar HPatches pair v_churchill 1-2 (1 px) H kept
only 66% of F's inliers at the same threshold but 91% at twice it. Planar pairs show a planar scene or a
rotation-only motion, for which F is not determined and from which the mapper should not initialise. When F
cannot be fitted but H can, H's inliers are used. With fewer than ``min_inliers`` inliers the pair is unverified: model ``"none"``, no inliers.

MAGSAC++ marginalises over noise scales, so its inlier mask can include points farther than the threshold
from their epipolar lines: within 2 thresholds on real pairs (Sceaux Castle), but up to 90 px for a
degenerate F fitted to random points. F's inliers are therefore also required to lie within
2 thresholds of their epipolar lines in both images.

Random correspondences: MAGSAC++'s mask holds 11-41 points among 100-3000 uniformly random matches in an
800 px image at 1 px; after the distance check 6-15 remain, at the edge of ``min_inliers`` = 15. Between
unrelated photos the ratio test leaves about 50 matches, and none of those pairs verify.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from matcher.config import VerificationConfig

__all__ = ["Verification", "verify_pair"]

MIN_MATCHES_F = 8


@dataclass
class Verification:
    """Result for one pair.

    Attributes:
        model: "fundamental", "planar" or "none".
        F: (3, 3) with ``x2ᵀ F x1 = 0``, or None.
        H: (3, 3) with ``x2 ~ H x1``, or None (set for "planar" pairs).
        inliers: (M,) bool over the pair's matches.
    """

    model: str
    F: np.ndarray | None
    H: np.ndarray | None
    inliers: np.ndarray


def _fit(kind: str, xy1: np.ndarray, xy2: np.ndarray, threshold: float, config: VerificationConfig):
    try:
        if kind == "fundamental":
            model, mask = cv2.findFundamentalMat(
                xy1, xy2, cv2.USAC_MAGSAC, threshold, config.confidence, config.max_iterations
            )
        else:
            model, mask = cv2.findHomography(
                xy1, xy2, cv2.USAC_MAGSAC, threshold, maxIters=config.max_iterations, confidence=config.confidence
            )
    except cv2.error:  # OpenCV 5's USAC asserts (!model.empty()) on some degenerate match sets: no model
        return None, np.zeros(len(xy1), bool)
    if model is None or mask is None or model.shape != (3, 3):
        return None, np.zeros(len(xy1), bool)
    return model.astype(np.float64), mask.ravel().astype(bool)


def _epipolar_distance(F: np.ndarray, xy1: np.ndarray, xy2: np.ndarray) -> np.ndarray:
    """(M,) the larger of the two point-to-epipolar-line distances, in pixels."""
    x1 = np.c_[xy1, np.ones(len(xy1))]
    x2 = np.c_[xy2, np.ones(len(xy2))]
    lines2, lines1 = x1 @ F.T, x2 @ F
    d2 = np.abs(np.sum(lines2 * x2, 1)) / np.maximum(np.linalg.norm(lines2[:, :2], axis=1), 1e-12)
    d1 = np.abs(np.sum(lines1 * x1, 1)) / np.maximum(np.linalg.norm(lines1[:, :2], axis=1), 1e-12)
    return np.maximum(d1, d2)


def verify_pair(
    xy1: np.ndarray, xy2: np.ndarray, threshold_px: float, config: VerificationConfig | None = None
) -> Verification:
    """Fit F and H to matched points.

    Args:
        xy1, xy2: (M, 2) matched keypoint coordinates in full-resolution pixels.
        threshold_px: inlier threshold in full-resolution pixels.

    Returns:
        :class:`Verification`; ``inliers`` refers to the rows of ``xy1``/``xy2``.
    """
    config = config or VerificationConfig()
    m = len(xy1)
    none = Verification("none", None, None, np.zeros(m, bool))
    if m < max(MIN_MATCHES_F, config.min_inliers):
        return none
    cv2.setRNGSeed(0)
    xy1 = np.ascontiguousarray(xy1, dtype=np.float64)
    xy2 = np.ascontiguousarray(xy2, dtype=np.float64)
    F, f_inliers = _fit("fundamental", xy1, xy2, threshold_px, config)
    if F is not None:
        f_inliers &= _epipolar_distance(F, xy1, xy2) <= 2.0 * threshold_px
    H, h_inliers = _fit("homography", xy1, xy2, 2.0 * threshold_px, config)
    nf, nh = int(f_inliers.sum()), int(h_inliers.sum())
    planar = H is not None and nh >= config.min_inliers and nh >= config.homography_ratio * nf
    if F is not None and nf >= config.min_inliers:
        return Verification("planar" if planar else "fundamental", F, H if planar else None, f_inliers)
    if planar:
        return Verification("planar", None, H, h_inliers)
    return none
