"""Geometric verification of one pair with OpenCV's USAC (MAGSAC++).

A fundamental matrix F and a homography H are both fitted to the matches. As in COLMAP's two-view
estimator, the inliers are F's, and the pair is labelled ``planar`` (COLMAP's PLANAR_OR_PANORAMIC) when H
explains at least ``homography_ratio`` of F's inliers: a planar scene or a rotation-only pair, for which F is
not determined and the mapper should not initialise from. When F cannot be fitted but H can, H's inliers are
used. With fewer than ``min_inliers`` inliers the pair is unverified: model ``"none"``, no inliers.
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
    if kind == "fundamental":
        model, mask = cv2.findFundamentalMat(
            xy1, xy2, cv2.USAC_MAGSAC, threshold, config.confidence, config.max_iterations
        )
    else:
        model, mask = cv2.findHomography(
            xy1, xy2, cv2.USAC_MAGSAC, threshold, maxIters=config.max_iterations, confidence=config.confidence
        )
    if model is None or mask is None or model.shape != (3, 3):
        return None, np.zeros(len(xy1), bool)
    return model.astype(np.float64), mask.ravel().astype(bool)


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
    H, h_inliers = _fit("homography", xy1, xy2, threshold_px, config)
    nf, nh = int(f_inliers.sum()), int(h_inliers.sum())
    planar = H is not None and nh >= config.min_inliers and nh >= config.homography_ratio * nf
    if F is not None and nf >= config.min_inliers:
        return Verification("planar" if planar else "fundamental", F, H if planar else None, f_inliers)
    if planar:
        return Verification("planar", None, H, h_inliers)
    return none
