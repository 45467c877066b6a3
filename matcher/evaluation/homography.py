"""Homography metrics for planar sequences (HPatches).

Pixel convention everywhere (OpenCV/kornia, as in the rest of the package): the centre of the top-left
pixel is (0, 0), so an image of width W spans x in [-0.5, W - 0.5]. The HPatches ``H_1_k`` files use the
same convention (checked on v_churchill, k = 2..6: after ``cv2.warpPerspective(img1, H_1_k)`` the residual
shift to k.ppm is 0.04-0.13 px, smaller for every k than with either half-pixel-shifted variant of H).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "corner_error",
    "homography_accuracy",
    "load_hpatches_sequence",
    "mean_matching_accuracy",
    "reprojection_errors",
    "warp_points",
]

_IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg")


def load_hpatches_sequence(folder: str | Path) -> tuple[list[Path], dict[int, np.ndarray]]:
    """Read an HPatches sequence folder (``1.ppm`` ... ``6.ppm``, ``H_1_2`` ... ``H_1_6``).

    Returns the image paths sorted by their number (image 1 first) and ``{k: H_1_k}``, where each
    H_1_k is a (3, 3) float64 homography mapping pixels of image 1 to pixels of image k.
    Raises FileNotFoundError if the folder has no image ``1.*`` or an ``H_1_k`` has no image ``k``.
    """
    folder = Path(folder)
    images: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.suffix.lower() in _IMAGE_SUFFIXES and path.stem.isdigit():
            images[int(path.stem)] = path
    if 1 not in images:
        raise FileNotFoundError(f"no reference image 1.ppm in {folder}")
    homographies: dict[int, np.ndarray] = {}
    for path in folder.glob("H_1_*"):
        k = path.name.removeprefix("H_1_")
        if not k.isdigit():
            continue
        if int(k) not in images:
            raise FileNotFoundError(f"{path.name} has no image {k} in {folder}")
        H = np.loadtxt(path, dtype=np.float64)
        if H.shape != (3, 3):
            raise ValueError(f"{path} does not hold a 3x3 matrix (shape {H.shape})")
        homographies[int(k)] = H
    return [images[k] for k in sorted(images)], dict(sorted(homographies.items()))


def warp_points(xy: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Map points (M, 2) through the homography H (3, 3); returns (M, 2) float64.

    Points mapped to the plane at infinity (third coordinate 0) come out as inf.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    H = np.asarray(H, dtype=np.float64)
    p = xy @ H[:, :2].T + H[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p[:, :2] / p[:, 2:]
    out[~np.isfinite(out).all(axis=1)] = np.inf
    return out


def reprojection_errors(
    xy1: np.ndarray, xy2: np.ndarray, H: np.ndarray, symmetric: bool = False
) -> np.ndarray:
    """Pixel error of matches (xy1[i], xy2[i]) under the ground-truth homography H (image 1 -> 2).

    Default (one-way, the HPatches MMA convention of D2-Net and later): ``|| H xy1 - xy2 ||`` in
    image-2 pixels. ``symmetric=True``: the mean of that and ``|| H^-1 xy2 - xy1 ||`` (image-1 pixels).
    xy1, xy2: (M, 2) pixel coordinates; returns (M,) float64 (inf for points sent to infinity).
    """
    xy1 = np.asarray(xy1, dtype=np.float64).reshape(-1, 2)
    xy2 = np.asarray(xy2, dtype=np.float64).reshape(-1, 2)
    if len(xy1) != len(xy2):
        raise ValueError(f"xy1 and xy2 differ in length: {len(xy1)} != {len(xy2)}")
    forward = np.linalg.norm(warp_points(xy1, H) - xy2, axis=1)
    if not symmetric:
        return forward
    backward = np.linalg.norm(warp_points(xy2, np.linalg.inv(H)) - xy1, axis=1)
    return 0.5 * (forward + backward)


def mean_matching_accuracy(
    errors: np.ndarray, thresholds: Iterable[float] = range(1, 11)
) -> np.ndarray:
    """Fraction of matches with error <= t, for each threshold t (pixels); returns (T,) float64.

    NaN errors count as wrong. No matches at all gives 0 at every threshold (a pair where the method
    found nothing is a failure, not a pair to skip). Average these arrays over pairs for MMA curves.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    thresholds = np.asarray(list(thresholds), dtype=np.float64)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    errors = np.where(np.isnan(errors), np.inf, errors)
    return (errors[None, :] <= thresholds[:, None]).mean(axis=1)


def _image_corners(width: int, height: int) -> np.ndarray:
    """Centres of the four corner pixels (4, 2): (0,0), (W-1,0), (W-1,H-1), (0,H-1)."""
    return np.array(
        [[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]]
    )


def corner_error(
    H_est: np.ndarray | None, H_gt: np.ndarray, width: int, height: int
) -> float:
    """Mean distance (pixels of image 2) between the 4 corners of image 1 mapped by H_est and by H_gt.

    Corners are the centres of the corner pixels of the (width x height) image 1. H_est None (no
    estimate) or a degenerate H_est gives inf, so failures count against homography_accuracy.
    """
    if H_est is None:
        return float("inf")
    corners = _image_corners(width, height)
    d = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1)
    return float(np.mean(d))


def homography_accuracy(
    corner_errors: np.ndarray, thresholds: Iterable[float] = (1, 3, 5)
) -> dict[float, float]:
    """Fraction of pairs whose corner error is <= t, as ``{t: fraction}``; NaN counts as a failure."""
    thresholds = list(thresholds)
    accuracy = mean_matching_accuracy(corner_errors, thresholds)
    return {t: float(a) for t, a in zip(thresholds, accuracy, strict=True)}
