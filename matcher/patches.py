"""Patches: a local affine frame (LAF) per keypoint and 32×32 anti-aliased patches, with kornia.

A LAF ``[A | c]`` (kornia's convention) has centre ``c`` in pixels and ``A = r · R(θ)``, where the
half-width ``r = magnification · sigma`` and θ is the keypoint orientation. kornia samples the square
``c + A [-1, 1]²`` from the pyramid level that matches the LAF's size, so large keypoints are not aliased.

The default ``magnification = 6`` makes the patch cover ±6σ, the same support as the SIFT descriptor
(4 bins of 3σ), and matches kornia's ``mr_size`` and the DoG+HardNet pipelines of hloc and LightGlue.
"""

from __future__ import annotations

import numpy as np
import torch
import kornia.feature as KF

from matcher.config import PatchConfig
from matcher.detect import Keypoints
from matcher.patch_sampler import DEFAULT_MAGNIFICATION

__all__ = [
    "PATCH_SIZE",
    "DEFAULT_MAGNIFICATION",
    "image_to_tensor",
    "lafs_from_keypoints",
    "extract_patches",
    "homography_jacobian",
    "warp_lafs",
    "lafs_inside_image",
]

PATCH_SIZE = PatchConfig.patch_size  # the pipeline's patch side, set in config.py; a model checks it against its input
# DEFAULT_MAGNIFICATION: patch half-width in sigmas where neither the configuration nor a model sets one


def image_to_tensor(gray: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 image -> (1, 1, H, W) float32 tensor in [0, 1]."""
    if gray.ndim != 2:
        raise ValueError(f"expected a (H, W) grey image, got shape {gray.shape}")
    return torch.from_numpy(np.require(gray, requirements=("C", "W"))).float().div_(255.0)[None, None]


def lafs_from_keypoints(keypoints: Keypoints, magnification: float = DEFAULT_MAGNIFICATION) -> torch.Tensor:
    """Build LAFs from keypoints (their affine ``shapes`` when they have them, else scale and orientation).

    Args:
        keypoints: N keypoints (centre, sigma, orientation in radians).
        magnification: patch half-width in units of the keypoint's sigma.

    Returns:
        LAFs (1, N, 2, 3) float32, in the keypoints' pixel frame.
    """
    xy = torch.from_numpy(keypoints.xy).float()[None]
    scale = torch.from_numpy(keypoints.scales).float().mul(magnification)[None, :, None, None]
    if keypoints.shapes is not None:  # affine frames: [magnification * sigma * shape | xy]
        shape = torch.from_numpy(np.ascontiguousarray(keypoints.shapes)).float()[None]
        return torch.cat([shape * scale, xy[..., None]], dim=-1)
    ori = torch.rad2deg(torch.from_numpy(keypoints.orientations).float())[None, :, None]
    return KF.laf_from_center_scale_ori(xy, scale, ori)


def extract_patches(
    image: np.ndarray | torch.Tensor,
    lafs: torch.Tensor,
    patch_size: int = PATCH_SIZE,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Sample anti-aliased patches with ``kornia.feature.extract_patches_from_pyramid``.

    Args:
        image: (H, W) uint8 array or (1, 1, H, W) float tensor in [0, 1].
        lafs: (1, N, 2, 3) LAFs in the image's pixel frame.
        patch_size: side of the square patches.
        chunk_size: LAFs sampled per call, to bound memory.

    Returns:
        patches (N, 1, PS, PS) float32 in [0, 1].
    """
    img = image_to_tensor(image) if isinstance(image, np.ndarray) else image
    n = lafs.shape[1]
    if n == 0:
        return torch.zeros((0, 1, patch_size, patch_size), dtype=torch.float32)
    out = [
        KF.extract_patches_from_pyramid(img, lafs[:, i : i + chunk_size], PS=patch_size)[0]
        for i in range(0, n, chunk_size)
    ]
    return torch.cat(out, 0).float()


def homography_jacobian(H: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map points through ``H`` and return the 2×2 Jacobian of the mapping at each point.

    Args:
        H: (3, 3) homography.
        xy: (N, 2) points.

    Returns:
        (mapped points (N, 2), Jacobians (N, 2, 2)), float64.
    """
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    u = H[0, 0] * x + H[0, 1] * y + H[0, 2]
    v = H[1, 0] * x + H[1, 1] * y + H[1, 2]
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    mapped = np.stack([u / w, v / w], 1)
    J = np.empty((len(x), 2, 2))
    J[:, 0, 0] = (H[0, 0] * w - u * H[2, 0]) / w**2
    J[:, 0, 1] = (H[0, 1] * w - u * H[2, 1]) / w**2
    J[:, 1, 0] = (H[1, 0] * w - v * H[2, 0]) / w**2
    J[:, 1, 1] = (H[1, 1] * w - v * H[2, 1]) / w**2
    return mapped, J


def warp_lafs(H: np.ndarray, lafs: np.ndarray) -> np.ndarray:
    """LAFs mapped through a homography by its local affine approximation at each centre.

    Args:
        H: (3, 3) homography.
        lafs: (N, 2, 3) LAFs ``[A | c]``.

    Returns:
        (N, 2, 3) float64 LAFs ``[J(c) A | H(c)]``.
    """
    centres, J = homography_jacobian(H, lafs[:, :, 2])
    return np.concatenate([np.einsum("nij,njk->nik", J, lafs[:, :, :2]), centres[:, :, None]], 2)


def lafs_inside_image(lafs: np.ndarray, height: int, width: int, border: float = 0.0) -> np.ndarray:
    """Which LAFs' squares ``c + A [-1, 1]²`` lie inside a ``height`` × ``width`` image.

    Args:
        lafs: (N, 2, 3) LAFs in pixels (pixel centres at integers).
        border: margin in pixels the corners must keep from the outermost pixel centres.

    Returns:
        (N,) bool.
    """
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    pts = lafs[:, None, :, 2] + np.einsum("nij,kj->nki", lafs[:, :, :2], corners)
    ok_x = (pts[..., 0] >= border) & (pts[..., 0] <= width - 1 - border)
    ok_y = (pts[..., 1] >= border) & (pts[..., 1] <= height - 1 - border)
    return (ok_x & ok_y).all(1)
