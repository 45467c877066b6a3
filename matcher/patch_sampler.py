"""kornia's LAF patches without torch: the same pyramid and bilinear samples, in NumPy and OpenCV.

:mod:`matcher.patches` (kornia) stays the reference and the only sampler of the torch engine and of training.
This copy exists for one measured reason: a run whose network runs through OpenVINO needs nothing else from
torch, and importing torch and kornia costs 2.1-2.7 s of a 2-image job that a pycolmap SIFT script finishes in
about 2.2 s (bench/two_image_job.py, bench/RESULTS.md). It follows the Convention block of
``kornia.feature.extract_patches_from_pyramid`` (kornia 0.9) and is pinned to it by
tests/test_patch_sampler.py on real images:

* level 0 is the image in [0, 1]; level ``l + 1`` is ``pyrdown`` of level ``l`` (5x5 binomial blur with
  reflect-101 borders, bilinear resize to ``floor(side / 2)``, half-pixel centres) while the shorter side stays
  at least ``PS`` (and at most ``min(H, W) // PS`` levels);
* a LAF ``[A | c]`` (pixels, centres at integers) of scale ``s = sqrt(|det A| + 1e-10)`` reads level
  ``floor(log2(2 s / PS))``, clamped to the levels built;
* cell ``(i, j)`` samples level-0 position ``p = c + A (u_j, u_i)``, ``u_k = (2k + 1) / PS - 1``, at the level's
  pixel ``(p + 0.5) * side_l / side_0 - 0.5``, clamped to the level's outermost pixel centres, bilinearly.

Measured against kornia on 4,096 DoG patches of entry-P10 0003 (800 and 1600 px): every pixel within 1e-4
(median of the per-patch maximum 1e-5), in 0.07-0.11 s against kornia's 1.0-1.5 s (load 8, 2 cores).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["DEFAULT_MAGNIFICATION", "lafs_from_keypoints_np", "extract_patches_np", "pyramid"]

DEFAULT_MAGNIFICATION = 6.0  # patch half-width in sigmas where neither the configuration nor a model sets one

_REMAP_ROWS = 32767  # SHRT_MAX
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def lafs_from_keypoints_np(xy: np.ndarray, scales: np.ndarray, orientations: np.ndarray,
                           magnification: float, shapes: np.ndarray | None = None) -> np.ndarray:
    """LAFs as :func:`matcher.patches.lafs_from_keypoints` builds them: (N, 2, 3) float32.

    Args:
        xy: (N, 2) centres; scales: (N,) sigmas; orientations: (N,) radians; shapes: (N, 2, 2) affine frames or
            None (then ``A = magnification * sigma * [[cos, sin], [-sin, cos]]``, kornia's rotation).
    """
    n = len(xy)
    lafs = np.empty((n, 2, 3), np.float32)
    lafs[:, :, 2] = np.asarray(xy, np.float32)
    scale = (np.asarray(scales, np.float32) * np.float32(magnification))[:, None, None]
    if shapes is not None:
        lafs[:, :, :2] = np.asarray(shapes, np.float32) * scale
        return lafs
    # kornia: degrees = rad2deg(radians) in float32, then deg2rad again before cos / sin
    degrees = (np.asarray(orientations, np.float32) * np.float32(180.0 / math.pi)).astype(np.float32)
    radians = (degrees * np.float32(math.pi / 180.0)).astype(np.float32)
    cos, sin = np.cos(radians), np.sin(radians)
    lafs[:, 0, 0], lafs[:, 0, 1], lafs[:, 1, 0], lafs[:, 1, 1] = cos, sin, -sin, cos
    lafs[:, :, :2] *= scale
    return lafs


def pyramid(image: np.ndarray, patch_size: int) -> list[np.ndarray]:
    """The levels kornia's ``extract_patches_from_pyramid`` builds for ``patch_size``: float32 (H_l, W_l)."""
    h, w = image.shape
    levels = [image]
    for _ in range(1, max(1, min(h, w) // patch_size)):
        top = levels[-1]
        if min(top.shape) <= 2 or min(top.shape[0] // 2, top.shape[1] // 2) < patch_size:
            break
        blurred = cv2.sepFilter2D(top, cv2.CV_32F, _BINOMIAL, _BINOMIAL, borderType=cv2.BORDER_REFLECT_101)
        levels.append(cv2.resize(blurred, (top.shape[1] // 2, top.shape[0] // 2), interpolation=cv2.INTER_LINEAR))
    return levels


def extract_patches_np(gray: np.ndarray, lafs: np.ndarray, patch_size: int = 32) -> np.ndarray:
    """Patches of ``lafs`` (N, 2, 3) from a (H, W) uint8 image: (N, 1, PS, PS) float32 in [0, 1], as kornia's
    ``extract_patches_from_pyramid`` samples them (see the module docstring)."""
    n = len(lafs)
    out = np.zeros((n, 1, patch_size, patch_size), np.float32)
    if n == 0:
        return out
    image = np.asarray(gray, np.float32) / np.float32(255.0)
    h, w = image.shape
    levels = pyramid(image, patch_size)
    lafs = np.asarray(lafs, np.float32)
    a = lafs[:, :, :2].astype(np.float64)
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 1, 0] * a[:, 0, 1] + 1e-10
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.floor(np.log2(2.0 * np.sqrt(np.abs(det)) / patch_size))
    finite = np.isfinite(lafs).all(axis=(1, 2))
    level = np.clip(np.nan_to_num(level, nan=0.0, posinf=len(levels) - 1, neginf=0.0), 0, len(levels) - 1)
    level = level.astype(np.int64)
    u = ((2.0 * np.arange(patch_size) + 1.0) / patch_size - 1.0).astype(np.float32)
    for index in np.unique(level[finite]):
        rows = np.flatnonzero((level == index) & finite)
        src = levels[index]
        hl, wl = src.shape
        lafs_l = lafs[rows]
        out[rows, 0] = _sample(src, _positions(lafs_l[:, 0], u, wl / w, wl), _positions(lafs_l[:, 1], u, hl / h, hl))
    return out


def _positions(rows: np.ndarray, u: np.ndarray, ratio: float, side: int) -> np.ndarray:
    """One coordinate of every cell at a level, clamped to its pixel centres: rows (n, 3) of the LAFs
    ``[a_x, a_y, c]`` -> (n, PS, PS) float32 ``(c + a_x u_j + a_y u_i + 0.5) * ratio - 0.5``."""
    r = np.float32(ratio)
    base = ((rows[:, 2] + np.float32(0.5)) * r - np.float32(0.5))[:, None, None]
    out = np.empty((len(rows), len(u), len(u)), np.float32)
    np.multiply((rows[:, 0] * r)[:, None, None], u[None, None, :], out=out)
    out += (rows[:, 1] * r)[:, None, None] * u[None, :, None]
    out += base
    return np.clip(out, 0.0, side - 1, out=out)


def _sample(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``src`` (H, W) read bilinearly at (x, y) (n, PS, PS), inside ``[0, W - 1] x [0, H - 1]``, by ``cv2.remap``
    (OpenCV 5 interpolates float32 maps without the 1/32-pixel table: within 1e-4 of kornia, measured)."""
    n, rows, cols = x.shape
    out = np.empty_like(x)
    step = max(1, (_REMAP_ROWS - 1) // rows)  # remap's maps and output have fewer than 32767 rows
    for start in range(0, n, step):
        stop = min(start + step, n)
        out[start:stop] = cv2.remap(src, x[start:stop].reshape(-1, cols), y[start:stop].reshape(-1, cols),
                                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(stop - start, rows, cols)
    return out
