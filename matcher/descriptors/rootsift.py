"""RootSIFT (Arandjelović & Zisserman, CVPR 2012) computed by OpenCV on the pipeline's own keypoints.

SIFT histograms are L1-normalised and square-rooted, which makes the L2 distance between RootSIFT vectors
the Hellinger distance between SIFT histograms; the rows have unit L2 norm.
"""

from __future__ import annotations

import cv2
import numpy as np

from matcher.detect import Keypoints

__all__ = ["RootSIFT", "to_cv_keypoints"]


def to_cv_keypoints(keypoints: Keypoints) -> list[cv2.KeyPoint]:
    """Keypoints -> OpenCV KeyPoints (size = 2 sigma, angle = clockwise degrees, packed octave kept)."""
    angles = np.mod(-np.rad2deg(keypoints.orientations.astype(np.float64)), 360.0)
    octaves = keypoints.octaves if keypoints.octaves is not None else np.zeros(len(keypoints), np.int32)
    return [
        cv2.KeyPoint(float(x), float(y), float(2.0 * s), float(a), float(r), int(o))
        for (x, y), s, a, r, o in zip(keypoints.xy, keypoints.scales, angles, keypoints.scores, octaves)
    ]


class RootSIFT:
    """RootSIFT descriptors of given keypoints, 128-D, unit L2 rows."""

    name = "rootsift"
    dim = 128

    def __init__(self) -> None:
        self._sift = cv2.SIFT_create(enable_precise_upscale=True)  # the detector's pyramid (matcher.detect)

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray:
        """gray (h, w) uint8, N keypoints in its frame -> (N, 128) float32."""
        if len(keypoints) == 0:
            return np.zeros((0, self.dim), np.float32)
        cv_kps = to_cv_keypoints(keypoints)
        out_kps, desc = self._sift.compute(gray, cv_kps)
        if desc is None or len(out_kps) != len(cv_kps):
            raise RuntimeError(f"OpenCV described {0 if desc is None else len(out_kps)} of {len(cv_kps)} keypoints")
        desc = desc.astype(np.float32)
        desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)
        return np.sqrt(desc).astype(np.float32)
