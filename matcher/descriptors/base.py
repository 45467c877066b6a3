"""The descriptor interface shared by every descriptor of the pipeline."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from matcher.detect import Keypoints

__all__ = ["Descriptor"]


@runtime_checkable
class Descriptor(Protocol):
    """Describes keypoints of one image.

    ``describe(gray, keypoints)`` takes the (h, w) uint8 image the keypoints were detected on and N keypoints
    in its pixel frame, and returns (N, dim) float32 descriptors with unit L2 rows, in the keypoints' order.
    """

    name: str
    dim: int

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray: ...
