"""Held-out patches from a homography sequence with ground truth (HPatches layout: ``1.ppm … 6.ppm``, ``H_1_k``).

DoG keypoints are detected in image 1 by the pipeline's detector (on the copy resized to ``max_edge``, as in
``match``); each keypoint's LAF is mapped into image k through the local affine approximation of the
ground-truth homography ``H_1_k`` (its Jacobian, :func:`matcher.patches.warp_lafs`)
and sampled with the pipeline's patch code. One keypoint is one identity; its views are image 1 and every
image whose frame lies inside the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from matcher.config import DetectionConfig
from matcher.detect import detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.patches import (
    DEFAULT_MAGNIFICATION,
    PATCH_SIZE,
    extract_patches,
    lafs_from_keypoints,
    lafs_inside_image,
    warp_lafs,
)
from matcher.training.homography_patches import PatchSet

__all__ = ["patches_from_homography_sequence"]


def patches_from_homography_sequence(
    sequence_dir: Path,
    max_keypoints: int = 2048,
    max_edge: int = 1600,
    magnification: float = DEFAULT_MAGNIFICATION,
) -> PatchSet:
    """Patches of image-1 keypoints in every image of the sequence (``photo`` = image index 0..5)."""
    sequence_dir = Path(sequence_dir)
    names = sorted(p.name for p in sequence_dir.glob("*.ppm"))
    if "1.ppm" not in names:
        raise FileNotFoundError(f"{sequence_dir}: no 1.ppm (HPatches layout expected)")
    ref = read_image(sequence_dir, "1.ppm").gray
    small, sx, sy = resize_for_detection(ref, max_edge)
    keypoints = detect_keypoints(small, DetectionConfig(max_keypoints=max_keypoints))
    full = keypoints.rescaled(sx, sy)
    lafs1 = lafs_from_keypoints(full, magnification)[0].double().numpy()
    views, oks = [], []
    for k, name in enumerate(names):
        gray = read_image(sequence_dir, name).gray
        if name == "1.ppm":
            lafs = lafs1
        else:
            lafs = warp_lafs(np.loadtxt(sequence_dir / f"H_1_{Path(name).stem}"), lafs1)
        ok = lafs_inside_image(lafs, *gray.shape)
        patches = torch.zeros((len(lafs), 1, PATCH_SIZE, PATCH_SIZE))
        if ok.any():
            patches[ok] = extract_patches(gray, torch.from_numpy(lafs[ok]).float()[None])
        views.append(patches)
        oks.append(ok)
    ok = np.stack(oks, 1)  # (N, images)
    keep = np.flatnonzero(ok.sum(1) >= 2)
    ok = ok[keep]
    stacked = torch.stack(views, 1)[torch.from_numpy(keep)]
    mask = torch.from_numpy(ok)
    return PatchSet(
        patches=stacked[mask].contiguous(),
        labels=torch.from_numpy(np.repeat(np.arange(len(keep)), ok.sum(1))),
        photo=torch.from_numpy(np.nonzero(ok)[1]),
        view=torch.from_numpy(np.repeat(keep, ok.sum(1))),
        names=tuple(names),
    )
