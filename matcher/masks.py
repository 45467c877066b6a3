"""Image masks in COLMAP's convention: no keypoints where the mask is 0.

The mask of image ``IMAGES/a/b.jpg`` is ``MASKDIR/a/b.jpg.png`` (COLMAP's ``--ImageReader.mask_path``), a grey
(or colour, read as grey) image of the photo's size. As in COLMAP's ``MaskKeypoints``, a keypoint at (x, y) is
dropped when the mask pixel ``(int(x + 0.5), int(y + 0.5))`` is 0 (our coordinates; COLMAP's keypoints carry
the +0.5 already). An image without a mask file keeps all its keypoints, as in COLMAP.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from matcher.errors import ImageReadError
from matcher.images import read_image

__all__ = ["mask_path", "read_mask", "masks_digest", "unmasked", "resize_mask"]


def mask_path(mask_dir: Path | str, name: str) -> Path:
    """``MASKDIR/NAME.png``: where COLMAP looks for the mask of image ``name``."""
    return Path(mask_dir) / f"{name}.png"


def read_mask(mask_dir: Path | str, name: str, width: int, height: int) -> np.ndarray | None:
    """(H, W) uint8 mask of image ``name``, or None when ``mask_dir`` is empty or holds no mask for it.

    Raises ImageReadError naming the mask file when it cannot be decoded or its size is not the image's.
    """
    if not mask_dir:
        return None
    path = mask_path(mask_dir, name)
    if not path.is_file():
        return None
    mask = read_image(Path(mask_dir), f"{name}.png").gray
    if mask.shape != (height, width):
        raise ImageReadError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, the image is {width}x{height}")
    return mask


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """The mask on the detection image of ``width`` x ``height`` (nearest neighbour: 0 stays 0)."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def unmasked(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: keypoints ``xy`` (N, 2) (full-resolution pixels) that fall on a non-zero mask pixel."""
    ij = np.floor(xy.astype(np.float64) + 0.5).astype(np.int64)
    h, w = mask.shape
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    keep = np.zeros(len(xy), bool)
    keep[inside] = mask[ij[inside, 1], ij[inside, 0]] != 0
    return keep


def masks_digest(mask_dir: Path | str, names: list[str]) -> str:
    """SHA-256 over the names and bytes of the masks that exist for ``names`` ("" without ``mask_dir``)."""
    if not mask_dir:
        return ""
    digest = hashlib.sha256()
    for name in sorted(names):
        path = mask_path(mask_dir, name)
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
