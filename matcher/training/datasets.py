"""Patch datasets on disk (HDF5, layout in :mod:`matcher.storage`) and how they are built.

* From a scene: run ``match`` + reconstruction on a folder (or reuse a given model), then the tracks of the
  reconstruction become identities (:mod:`matcher.training.track_patches`).
* From homographies: random warps and photometric changes of photos (self-supervised; works on any folder,
  :mod:`matcher.training.homography_patches`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from matcher.config import PipelineConfig, load_config
from matcher.descriptors import patch_magnification
from matcher.patches import DEFAULT_MAGNIFICATION
from matcher.pipeline import OutputPaths, run_match
from matcher.storage import read_patch_dataset, write_patch_dataset
from matcher.training.homography_patches import PatchSet, make_homography_patches
from matcher.training.track_patches import patches_from_reconstruction

if TYPE_CHECKING:
    from matcher.training.gt_tracks import TrackConfig

__all__ = [
    "save_patch_set",
    "load_patch_set",
    "concat_patch_sets",
    "build_scene_dataset",
    "build_homography_dataset",
    "build_camera_dataset",
    "reconstruct_scene",
]

log = logging.getLogger("matcher")


def save_patch_set(patch_set: PatchSet, path: Path, source: str, magnification: float) -> None:
    """Write a :class:`PatchSet` (patches quantised to uint8)."""
    patches = (patch_set.patches[:, 0].clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    rays = None if patch_set.rays is None else patch_set.rays.numpy()
    write_patch_dataset(path, patches, patch_set.labels.numpy(), patch_set.photo.numpy(), patch_set.view.numpy(),
                        list(patch_set.names), source, magnification, rays)


def load_patch_set(path: Path) -> PatchSet:
    """Read a patch dataset; patches come back as (N, 1, 32, 32) float32 in [0, 1]."""
    data = read_patch_dataset(path)
    return PatchSet(
        patches=torch.from_numpy(data["patches"]).float().div_(255.0)[:, None],
        labels=torch.from_numpy(data["labels"]),
        photo=torch.from_numpy(data["photo"]),
        view=torch.from_numpy(data["view"]),
        names=tuple(data["names"]),
        magnification=data["magnification"],
        rays=None if data["rays"] is None else torch.from_numpy(data["rays"]),
    )


def concat_patch_sets(sets: Sequence[PatchSet]) -> PatchSet:
    """Concatenate, keeping identities and photos distinct across sets; ``rays`` where any set has them (NaN rows
    for the sets without)."""
    patches, labels, photo, view, names = [], [], [], [], []
    label_offset, photo_offset = 0, 0
    for s in sets:
        patches.append(s.patches)
        labels.append(s.labels + label_offset)
        photo.append(s.photo + photo_offset)
        view.append(s.view)
        names.extend(s.names)
        label_offset += int(s.labels.max()) + 1 if len(s) else 0
        photo_offset += len(s.names)
    magnifications = {s.magnification for s in sets}
    magnification = magnifications.pop() if len(magnifications) == 1 else 0.0  # mixed: not one known value
    rays = None
    if any(s.rays is not None for s in sets):
        rays = torch.cat([s.rays if s.rays is not None else torch.full((len(s), 3), float("nan")) for s in sets])
    return PatchSet(torch.cat(patches), torch.cat(labels), torch.cat(photo), torch.cat(view), tuple(names),
                    magnification, rays)


def build_camera_dataset(scene_dir: Path, out_path: Path, config: PipelineConfig | None = None,
                         images: Sequence[str] | None = None, reconstruction: Path | None = None,
                         min_shared: int = 30, track_config: TrackConfig | None = None) -> PatchSet:
    """Patches of the descriptor-free tracks of a scene with cameras (:mod:`matcher.training.gt_tracks`).

    Args:
        scene_dir: a shared scene with ``images/`` and ground-truth cameras (``gt_dense_cameras/`` or ``cameras/``);
            with ``reconstruction``, the image folder itself.
        out_path: the patch dataset to write.
        config: pipeline settings (detector, ``images.max_edge``, magnification); default preset by default.
        images: only these images (default: every image with a camera).
        reconstruction: a COLMAP model of ``scene_dir`` (e.g. ``match --reconstruct``): its cameras (lens
            distortion removed from the keypoints for the geometry) replace ground truth, and only its covisible
            pairs (at least ``min_shared`` common 3D points) make two-view hypotheses.
        track_config: the track rule (e.g. ``TRACK_RULES["clean"]``); default: the published rule.
    """
    from matcher.training.gt_cameras import (
        covisible_pairs,
        load_reconstruction,
        load_scene_cameras,
        reconstruction_cameras,
        reconstruction_undistorters,
    )
    from matcher.training.gt_tracks import build_tracks, detect_views, tracks_to_patch_set

    config = config or load_config("default")
    pairs = undistort = None
    if reconstruction is None:
        image_dir = Path(scene_dir) / "images"
        cameras = load_scene_cameras(Path(scene_dir))
    else:
        image_dir = Path(scene_dir)
        rec = load_reconstruction(reconstruction)
        cameras = reconstruction_cameras(rec)
        undistort = reconstruction_undistorters(rec)
        pairs = covisible_pairs(rec, min_shared)
    if images is not None:
        cameras = {name: P for name, P in cameras.items() if name in set(images)}
    views = detect_views(image_dir, cameras, config.detection, config.images.max_edge, undistort)
    tracks = build_tracks(views, track_config, pairs=pairs)
    magnification = patch_magnification(config.descriptor, config.patches)
    patch_set = tracks_to_patch_set(views, tracks, magnification)
    source = f"camera tracks of {scene_dir}" + ("" if reconstruction is None else f" (cameras of {reconstruction})")
    save_patch_set(patch_set, out_path, source=source, magnification=magnification)
    log.info("%s: %d patches of %d tracks", out_path, len(patch_set), patch_set.num_identities)
    return patch_set


def reconstruct_scene(image_dir: Path, work_dir: Path, config: PipelineConfig, progress: bool = True) -> Path:
    """``match`` + reconstruction of a folder into ``work_dir`` (reusing a finished one). Returns the model dir
    (``work_dir/sparse/0``, the largest model)."""
    from matcher.mapping import model_path

    work_dir = Path(work_dir)
    sparse = work_dir / "sparse"
    if (model_path(sparse) / "points3D.bin").is_file() and (work_dir / "db.db").is_file():
        return model_path(sparse)
    run_match(image_dir, work_dir / "db.db", config, overwrite=True, reconstruct_dir=sparse, progress=progress)
    return model_path(sparse)


def build_scene_dataset(
    image_dir: Path,
    out_path: Path,
    work_dir: Path,
    config: PipelineConfig | None = None,
    sparse_dir: Path | None = None,
    max_reprojection_error: float = 1.0,
    progress: bool = True,
) -> PatchSet:
    """Patches of a scene's 3D points, written to ``out_path``.

    Without ``sparse_dir`` the scene is matched and reconstructed in ``work_dir`` first (default preset).
    With it, ``work_dir/db.features.h5`` must be the features of the run that made that model.
    """
    config = config or load_config("default")
    work_dir = Path(work_dir)
    if sparse_dir is None:
        sparse_dir = reconstruct_scene(image_dir, work_dir, config, progress)
    patch_set = patches_from_reconstruction(
        image_dir, sparse_dir, OutputPaths(work_dir / "db.db").features, config,
        max_reprojection_error=max_reprojection_error,
    )
    save_patch_set(patch_set, out_path, source=f"tracks of {image_dir}",
                   magnification=patch_magnification(config.descriptor, config.patches))
    log.info("%s: %d patches of %d 3D points", out_path, len(patch_set), patch_set.num_identities)
    return patch_set


def build_homography_dataset(
    photos: Sequence[str | Path],
    out_path: Path,
    warps_per_photo: int = 4,
    max_keypoints: int = 1024,
    seed: int = 0,
    magnification: float = DEFAULT_MAGNIFICATION,
    jpeg_prob: float = 0.0,
    max_side: int = 640,
) -> PatchSet:
    """Self-supervised patches from random homographies of ``photos`` (paths or scikit-image sample names)."""
    patch_set = make_homography_patches(
        tuple(photos), n_warps=warps_per_photo, max_keypoints=max_keypoints, seed=seed, magnification=magnification,
        jpeg_prob=jpeg_prob, max_side=max_side,
    )
    save_patch_set(patch_set, out_path, source=f"homographies of {len(photos)} photos", magnification=magnification)
    return patch_set
