"""The descriptor interface shared by every descriptor of the pipeline."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from matcher.detect import Keypoints

__all__ = ["Descriptor", "describe_orientations"]


@runtime_checkable
class Descriptor(Protocol):
    """Describes keypoints of one image.

    ``describe(gray, keypoints)`` takes the (h, w) uint8 image the keypoints were detected on and N keypoints
    in its pixel frame, and returns (N, dim) float32 descriptors with unit L2 rows, in the keypoints' order.
    """

    name: str
    dim: int

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray: ...


def describe_orientations(descriptor: Descriptor, gray: np.ndarray, keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """Describe N keypoints and their M extra orientations (:attr:`Keypoints.extra_orientations`) in one call.

    Returns:
        (N, dim) float32 descriptors of the keypoints and (M, dim) float32 of the extra rows (in the order of
        ``keypoints.extra_index``), unit rows.
    """
    rows = descriptor.describe(gray, keypoints.orientation_rows())
    return rows[: len(keypoints)], rows[len(keypoints):]
