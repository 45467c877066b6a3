"""Patch datasets from a reconstruction: every well-observed 3D point is one identity, its views are patches.

The patches are cut by the pipeline's own code from the pipeline's own keypoints: for each registered image the
keypoints of ``NAME.features.h5`` (full resolution) are mapped to the detection frame (the image resized to
``images.max_edge``, exactly as ``match`` did) and sampled with :func:`matcher.patches.extract_patches` at the
configured magnification. The model is therefore trained on exactly the patches it describes in use.

A 3D point is kept when its track has at least ``min_track_length`` observations and its mean reprojection
error is at most ``max_reprojection_error`` pixels.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pycolmap
import torch

from matcher.config import PipelineConfig
from matcher.descriptors import patch_magnification
from matcher.detect import Keypoints
from matcher.images import read_image, resize_for_detection
from matcher.mapping import resolve_model_dir
from matcher.patches import extract_patches, lafs_from_keypoints
from matcher.storage import FeatureStore
from matcher.training.homography_patches import PatchSet

__all__ = ["patches_from_reconstruction", "split_identities"]


def patches_from_reconstruction(
    image_dir: Path,
    sparse_dir: Path,
    features_path: Path,
    config: PipelineConfig,
    min_track_length: int = 2,
    max_reprojection_error: float = 1.0,
    max_views: int = 8,
    seed: int = 0,
) -> PatchSet:
    """Patches of the tracks of a pycolmap reconstruction.

    Args:
        image_dir: the image folder the reconstruction was made from.
        sparse_dir: a COLMAP model folder (``cameras.bin``, ``images.bin``, ``points3D.bin``), or the mapper's
            output folder holding it as ``0/``.
        features_path: the ``NAME.features.h5`` of the ``match`` run that made the database.
        config: that run's configuration (``images.max_edge`` and ``patches`` are used).
        max_views: at most this many views per point (a random subset of longer tracks).

    Returns:
        :class:`~matcher.training.homography_patches.PatchSet`: ``labels`` are 3D point ids renumbered 0..P-1,
        ``photo`` the index of the image in ``names``, ``view`` the keypoint index in that image.
    """
    rec = pycolmap.Reconstruction(resolve_model_dir(Path(sparse_dir)))
    rng = np.random.default_rng(seed)
    per_image: dict[int, list[tuple[int, int]]] = defaultdict(list)  # image_id -> [(label, keypoint index)]
    label = 0
    for point_id in sorted(rec.points3D):
        point = rec.points3D[point_id]
        elements = sorted((el.image_id, el.point2D_idx) for el in point.track.elements)
        # One view per image: a track may see the same image twice (rare, after merges).
        unique = list({image_id: idx for image_id, idx in elements}.items())
        if len(unique) < min_track_length or point.error > max_reprojection_error:
            continue
        if len(unique) > max_views:
            unique = [unique[i] for i in sorted(rng.choice(len(unique), max_views, replace=False))]
        for image_id, point2d_idx in unique:
            per_image[image_id].append((label, point2d_idx))
        label += 1

    names: list[str] = []
    patches, labels, photo, view = [], [], [], []
    magnification = patch_magnification(config.descriptor, config.patches)
    with FeatureStore(Path(features_path), "r") as features:
        for image_id in sorted(per_image):
            name = rec.images[image_id].name
            entries = np.array(per_image[image_id], dtype=np.int64)
            f = features.read(name)
            image = read_image(Path(image_dir), name)
            small, sx, sy = resize_for_detection(image.gray, config.images.max_edge)
            idx = entries[:, 1]
            keypoints = Keypoints(
                f.keypoints[idx], f.scales[idx], f.orientations[idx], f.scores[idx]
            ).rescaled(1.0 / sx, 1.0 / sy)
            lafs = lafs_from_keypoints(keypoints, magnification)
            patches.append(extract_patches(small, lafs, config.patches.patch_size))
            labels.append(entries[:, 0])
            photo.append(np.full(len(entries), len(names)))
            view.append(idx)
            names.append(name)
    if not patches:
        raise ValueError(f"{sparse_dir}: no 3D point with a track of {min_track_length}+ views")
    return PatchSet(
        patches=torch.cat(patches),
        labels=torch.from_numpy(np.concatenate(labels)),
        photo=torch.from_numpy(np.concatenate(photo)),
        view=torch.from_numpy(np.concatenate(view)),
        names=tuple(names),
    )


def split_identities(patch_set: PatchSet, held_out_fraction: float, seed: int = 0) -> tuple[PatchSet, PatchSet]:
    """Split by identity (3D point): no point has views on both sides. Returns (kept, held out)."""
    labels = patch_set.labels.numpy()
    unique = np.unique(labels)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(unique, int(round(held_out_fraction * len(unique))), replace=False).tolist())
    mask = torch.from_numpy(np.array([label in held for label in labels]))

    def subset(m: torch.Tensor) -> PatchSet:
        return PatchSet(patch_set.patches[m], patch_set.labels[m], patch_set.photo[m], patch_set.view[m],
                        patch_set.names, patch_set.magnification,
                        None if patch_set.rays is None else patch_set.rays[m])

    return subset(~mask), subset(mask)
