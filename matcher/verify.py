"""Geometric verification of one pair with OpenCV's USAC (MAGSAC++).

A fundamental matrix is fitted to the matches; a homography too. The homography is kept when it explains at
least ``homography_ratio`` of the fundamental matrix's inliers: planar scenes and rotation-only pairs (where F
is degenerate) are then described by H, as COLMAP does with its H/F inlier ratio. With fewer than
``min_inliers`` inliers the pair is unverified: model ``"none"``, no inliers.
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
    """Result for one pair: ``model`` in {"fundamental", "homography", "none"}, ``geometry`` (3, 3) or None,
    ``inliers`` (M,) bool over the pair's matches."""

    model: str
    geometry: np.ndarray | None
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
    """Fit F (and H) to matched points.

    Args:
        xy1, xy2: (M, 2) matched keypoint coordinates in full-resolution pixels.
        threshold_px: inlier threshold in full-resolution pixels.

    Returns:
        :class:`Verification`; ``inliers`` refers to the rows of ``xy1``/``xy2``.
    """
    config = config or VerificationConfig()
    m = len(xy1)
    none = Verification("none", None, np.zeros(m, bool))
    if m < max(MIN_MATCHES_F, config.min_inliers):
        return none
    cv2.setRNGSeed(0)
    xy1 = np.ascontiguousarray(xy1, dtype=np.float64)
    xy2 = np.ascontiguousarray(xy2, dtype=np.float64)
    F, f_inliers = _fit("fundamental", xy1, xy2, threshold_px, config)
    H, h_inliers = _fit("homography", xy1, xy2, threshold_px, config)
    nf, nh = int(f_inliers.sum()), int(h_inliers.sum())
    if H is not None and nh >= config.min_inliers and nh >= config.homography_ratio * nf:
        return Verification("homography", H, h_inliers)
    if F is not None and nf >= config.min_inliers:
        return Verification("fundamental", F, f_inliers)
    return none
