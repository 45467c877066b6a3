"""Spatial-neighbour hard negatives of camera-track patches (issue 11).

The hard patch benchmark (:mod:`matcher.training.hard_benchmark`) pits each positive against the keypoints of
the target view nearest to the true one (outside ``max(exclusion_px, σ / 2)``, the same blob). Batch negatives of
track training are other 3D points, far apart, so the network never sees those. This module cuts, for every
observation of a camera-track patch set (:func:`matcher.training.gt_tracks.tracks_to_patch_set`), the patches of
the ``k`` nearest other DoG keypoints of the same view, by the same rule.

The keypoints are re-detected as the track set was built (same detector settings: the ``pipeline`` preset
``matcher dataset cameras --pipeline`` used; same ``max_edge``); a view is used only when the re-cut track patches
equal the stored ones (so the keypoint indices refer to the same keypoints), else it is skipped and reported; if
no view reproduces, a one-line :class:`~matcher.errors.ConfigError` names the file.

The result is a :class:`PatchSet` whose ``labels`` are the labels of the observation each neighbour belongs to,
``photo`` its view and ``view`` the neighbour's keypoint index: rows that act only as negatives of that
observation (:func:`matcher.training.distill.spatial_hardnet_loss`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from matcher.config import DetectionConfig
from matcher.detect import Keypoints, detect_keypoints
from matcher.errors import MatcherError
from matcher.images import read_image, resize_for_detection
from matcher.patches import extract_patches, lafs_from_keypoints
from matcher.training.homography_patches import PatchSet

__all__ = ["nearest_neighbours", "neighbour_patch_set", "build_neighbour_dataset"]

log = logging.getLogger("matcher")


def nearest_neighbours(keypoints: Keypoints, rows: np.ndarray, k: int = 4, exclusion_px: float = 3.0) -> np.ndarray:
    """The ``k`` keypoints nearest to each of ``rows`` outside ``max(exclusion_px, σ_row / 2)`` (the benchmark's
    rule): (R, k) int64 keypoint indices, -1 where the view has fewer."""
    xy = torch.from_numpy(keypoints.xy.astype(np.float32))
    rows = np.asarray(rows, np.int64)
    out = np.full((rows.size, k), -1, np.int64)
    if rows.size == 0 or len(keypoints) == 0:
        return out
    radius = torch.from_numpy(np.maximum(exclusion_px, 0.5 * keypoints.scales[rows]).astype(np.float32))
    for start in range(0, rows.size, 2048):
        sel = slice(start, start + 2048)
        dist = torch.cdist(xy[torch.from_numpy(rows[sel])], xy)
        dist = dist.masked_fill(dist < radius[sel, None], float("inf"))
        kk = min(k, dist.shape[1])
        near = dist.topk(kk, dim=1, largest=False)
        idx = near.indices.numpy()
        idx[~torch.isfinite(near.values).numpy()] = -1
        out[sel, :kk] = idx
    return out


def neighbour_patch_set(gray: list[np.ndarray], keypoints: list[Keypoints], tracks: PatchSet, k: int = 4,
                        exclusion_px: float = 3.0, magnification: float = 6.0, tolerance: float = 2.0 / 255
                        ) -> tuple[PatchSet, list[str]]:
    """Neighbour patches of every observation of ``tracks`` (``photo`` = view index into ``gray``/``keypoints``,
    ``view`` = keypoint index).

    Args:
        gray: per view, the (H, W) uint8 detection-frame image. keypoints: per view, its keypoints.
        tolerance: largest mean absolute difference between a re-cut track patch and the stored one for the
            view to be used.

    Returns:
        The neighbour :class:`PatchSet` (labels = the observation's label) and the names of the skipped views.
    """
    patches, labels, photo, kp = [], [], [], []
    skipped = []
    for v, (img, kps) in enumerate(zip(gray, keypoints)):
        rows = np.flatnonzero(tracks.photo.numpy() == v)
        if rows.size == 0:
            continue
        obs = tracks.view.numpy()[rows]
        if obs.max() >= len(kps):
            skipped.append(tracks.names[v])
            continue
        recut = extract_patches(img, lafs_from_keypoints(kps.select(obs), magnification))
        if float((recut - tracks.patches[rows]).abs().mean()) > tolerance:
            skipped.append(tracks.names[v])
            continue
        near = nearest_neighbours(kps, obs, k, exclusion_px)  # (R, k)
        owner = np.repeat(rows, k)[near.ravel() >= 0]
        idx = near.ravel()[near.ravel() >= 0]
        if idx.size == 0:
            continue
        patches.append(extract_patches(img, lafs_from_keypoints(kps.select(idx), magnification)))
        labels.append(tracks.labels[owner])
        photo.append(torch.full((idx.size,), v, dtype=torch.int64))
        kp.append(torch.from_numpy(idx))
    if not patches:
        empty = torch.zeros(0, dtype=torch.int64)
        return PatchSet(torch.zeros((0, 1, 32, 32)), empty, empty, empty, tracks.names, magnification), skipped
    return PatchSet(torch.cat(patches), torch.cat(labels).long(), torch.cat(photo), torch.cat(kp), tracks.names,
                    magnification), skipped


def build_neighbour_dataset(tracks_path: Path, image_dir: Path, out_path: Path, max_edge: int = 1600, k: int = 4,
                            exclusion_px: float = 3.0, detection: DetectionConfig | None = None,
                            pipeline: str = "default") -> PatchSet:
    """Re-detect the views of a camera-track dataset and write its spatial-neighbour patches to ``out_path``.

    ``detection`` (or else the ``pipeline`` preset's detector) must be the one the tracks were built with.

    Raises:
        ConfigError: when no view's re-cut track patches equal the stored ones (other detector settings).
    """
    from matcher.errors import ConfigError
    from matcher.training.datasets import load_patch_set, save_patch_set

    tracks = load_patch_set(Path(tracks_path))
    used = "the given detection settings" if detection is not None else f"the {pipeline!r} preset's detector"
    if detection is None:
        from matcher.config import load_config

        detection = load_config(pipeline).detection  # what ``matcher dataset cameras --pipeline`` detects with
    gray, kps = [], []
    for name in tracks.names:
        small, _, _ = resize_for_detection(read_image(Path(image_dir), name).gray, max_edge)
        gray.append(small)
        kps.append(detect_keypoints(small, detection))
    magnification = tracks.magnification or 6.0
    nb, skipped = neighbour_patch_set(gray, kps, tracks, k, exclusion_px, magnification)
    if len(tracks) and len(skipped) == len(tracks.names):
        raise ConfigError(f"{tracks_path}: no view's re-detected keypoints reproduce its track patches ({used}, "
                          f"max_edge {max_edge}); use the --pipeline and --max-edge the tracks were built with")
    if skipped:
        log.warning("%s: views skipped (re-detection does not reproduce the track patches): %s", tracks_path,
                    ", ".join(skipped))
    save_patch_set(nb, Path(out_path), source=f"spatial neighbours ({k}) of {tracks_path}", magnification=magnification)
    log.info("%s: %d neighbour patches of %d observations (%d views skipped)", out_path, len(nb), len(tracks),
             len(skipped))
    return nb


def main(argv: list[str] | None = None) -> None:
    """``python -m matcher.training.spatial_negatives TRACKS.h5 IMAGE_DIR OUT.h5 [--max-edge N] [--neighbours K]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m matcher.training.spatial_negatives", description=main.__doc__)
    parser.add_argument("tracks", type=Path, help="camera-track patch dataset (matcher dataset cameras)")
    parser.add_argument("images", type=Path, help="the folder of its images")
    parser.add_argument("out", type=Path, help="neighbour patch dataset to write")
    parser.add_argument("--max-edge", type=int, default=1600, help="the detection size the tracks were built at")
    parser.add_argument("--neighbours", type=int, default=4, help="neighbours per observation")
    parser.add_argument("--pipeline", default="default",
                        help="preset whose detector the tracks were built with (matcher dataset cameras --pipeline)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        build_neighbour_dataset(args.tracks, args.images, args.out, args.max_edge, args.neighbours,
                                pipeline=args.pipeline)
    except MatcherError as exc:
        parser.exit(exc.exit_code, f"error: {exc}\n")


if __name__ == "__main__":
    main()
