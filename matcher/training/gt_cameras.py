"""Ground-truth cameras of the shared scenes, as 3×4 projection matrices in each image's pixel frame.

Two formats (../shared/data/README.md and each scene's SOURCE.txt):

* Strecha ``gt_dense_cameras/NAME.camera`` (castle-P19, castle-P30, entry-P10): K (3 rows); ``0 0 0``; R (3 rows);
  the camera centre C (1 row); ``W H``. P = K [Rᵀ | −Rᵀ C].
* ``cameras/STEM_P.txt`` (buddha): a 3×4 projection matrix, already rescaled to the shared (downscaled) images;
  image ``00006._c.jpg`` has ``cameras/00006_P.txt``.

A pycolmap reconstruction (e.g. ``match --reconstruct``) gives the same {name: P} through
:func:`reconstruction_cameras`, with :func:`reconstruction_undistorters` for its lens distortion (P is the
pinhole part) and :func:`covisible_pairs` to bound which views are compared: tracks of scenes without ground
truth, still linked by geometry alone (no descriptor decides the positives).

The tracks are only as good as the cameras. Checked 2026-12-01 on rootsift-preset reconstructions (the shipped
compact network's cosine between two views of each track, median; ground-truth castle-P19 / entry-P10: 0.88 /
0.97): sceaux-castle 0.87 and cyprus 0.87 (good), but sacre-coeur (internet photos) 0.09, lund (GLOMAP,
per-image distortion -0.42..+0.53) 0.18, monstree 0.18, kermit 0.30, ET 0.54. On sacre-coeur the tracks whose
keypoints the reconstruction also linked had a median of 0.81, the 82 % it had not 0.04: with cameras off by more
than the 1 px tolerance, true correspondences fail it while chance alignments pass at the same rate. Tighter
tolerances (0.5 px, 4 views) left 9 tracks of 5 images. Check a scene before training on its tracks.

Pixel centres are at integer coordinates (the pipeline's convention), which is the convention the shared files
were rescaled with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from matcher.images import list_images

__all__ = [
    "read_strecha_camera",
    "normalise_projection",
    "camera_centre",
    "load_scene_cameras",
    "load_reconstruction",
    "reconstruction_cameras",
    "camera_undistorter",
    "reconstruction_undistorters",
    "covisible_pairs",
]


def read_strecha_camera(path: Path) -> np.ndarray:
    """(3, 4) P = K [Rᵀ | −Rᵀ C] of a Strecha ``.camera`` file."""
    rows = [list(map(float, line.split())) for line in Path(path).read_text().split("\n") if line.strip()]
    if len(rows) < 8:
        raise ValueError(f"{path}: expected 9 lines (K, distortion, R, C, W H), got {len(rows)}")
    K = np.array(rows[0:3])
    R = np.array(rows[4:7])
    C = np.array(rows[7])
    return K @ np.hstack([R.T, (-R.T @ C)[:, None]])


def normalise_projection(P: np.ndarray) -> np.ndarray:
    """Scale P so that its third row's rotation part has unit norm and points into the scene.

    Then ``P[2] @ [X, 1]`` is the depth of X along the optical axis (positive in front of the camera).
    """
    P = np.asarray(P, np.float64)
    P = P / np.linalg.norm(P[2, :3])
    return P if np.linalg.det(P[:, :3]) > 0 else -P


def camera_centre(P: np.ndarray) -> np.ndarray:
    """(3,) centre C with P [C, 1] = 0."""
    return -np.linalg.solve(P[:, :3], P[:, 3])


def load_scene_cameras(scene_dir: Path) -> dict[str, np.ndarray]:
    """Normalised (3, 4) projection matrices of every image of a shared scene that has a ground-truth camera.

    Args:
        scene_dir: e.g. ``../shared/data/scenes/entry-P10`` (with ``images/`` and ``gt_dense_cameras/`` or
            ``cameras/``).

    Returns:
        {image name: P}, in image-name order.

    Raises:
        FileNotFoundError: the scene has no ground-truth camera folder.
    """
    scene_dir = Path(scene_dir)
    images = scene_dir / "images"
    out: dict[str, np.ndarray] = {}
    if (scene_dir / "gt_dense_cameras").is_dir():
        for name in list_images(images):
            path = scene_dir / "gt_dense_cameras" / f"{name}.camera"
            if path.is_file():
                out[name] = normalise_projection(read_strecha_camera(path))
    elif (scene_dir / "cameras").is_dir():
        for name in list_images(images):
            path = scene_dir / "cameras" / f"{name.split('.', 1)[0]}_P.txt"
            if path.is_file():
                out[name] = normalise_projection(np.loadtxt(path).reshape(3, 4))
    else:
        raise FileNotFoundError(f"{scene_dir}: no gt_dense_cameras/ or cameras/ folder")
    return out


def load_reconstruction(reconstruction):
    """A ``pycolmap.Reconstruction`` as given, or read from its folder (``sparse/0`` or a folder holding ``0/``).

    Raises:
        FileNotFoundError: the folder holds no COLMAP model.
    """
    import pycolmap

    if isinstance(reconstruction, pycolmap.Reconstruction):
        return reconstruction
    path = Path(reconstruction)
    for candidate in (path, path / "0"):
        if any((candidate / f"images.{ext}").is_file() for ext in ("bin", "txt")):
            return pycolmap.Reconstruction(str(candidate))
    raise FileNotFoundError(f"{path}: no COLMAP model (images.bin or images.txt) here or in {path / '0'}")


# COLMAP's pixel centres are at +0.5 (the export adds it); the pipeline's and the ground-truth loaders' at 0.
_FROM_COLMAP_PIXELS = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])


def reconstruction_cameras(reconstruction) -> dict[str, np.ndarray]:
    """Normalised (3, 4) projection matrices of every registered image of a reconstruction.

    The same contract as :func:`load_scene_cameras` (full-resolution pixels, integer pixel centres), with the
    camera's pinhole part K = ``camera.calibration_matrix()``; a lens distortion is left to
    :func:`reconstruction_undistorters`.

    Args:
        reconstruction: a ``pycolmap.Reconstruction`` or its folder (:func:`load_reconstruction`).

    Returns:
        {image name: P}, in image-name order.
    """
    rec = load_reconstruction(reconstruction)
    out: dict[str, np.ndarray] = {}
    for image in sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name):
        K = rec.cameras[image.camera_id].calibration_matrix()
        out[image.name] = normalise_projection(_FROM_COLMAP_PIXELS @ K @ image.cam_from_world().matrix())
    return out


def camera_undistorter(camera) -> Callable[[np.ndarray], np.ndarray]:
    """Map (N, 2) detected pixel positions of a ``pycolmap.Camera`` (integer pixel centres) to where its pinhole
    part K = ``camera.calibration_matrix()`` sees them (lens distortion removed; NaN where it cannot be)."""
    K = camera.calibration_matrix()
    idxs = list(camera.extra_params_idxs())
    if not idxs or not np.any(np.asarray(camera.params)[idxs]):
        return lambda xy: np.asarray(xy, np.float64)

    def undistort(xy: np.ndarray) -> np.ndarray:
        normalised = np.asarray(camera.cam_from_img(np.asarray(xy, np.float64) + 0.5), np.float64)
        return normalised @ K[:2, :2].T + K[:2, 2] - 0.5

    return undistort


def reconstruction_undistorters(reconstruction) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{name: :func:`camera_undistorter` of its camera} for every registered image: with P of
    :func:`reconstruction_cameras`, the projection of a 3D point lands on its undistorted observation."""
    rec = load_reconstruction(reconstruction)
    return {rec.images[i].name: camera_undistorter(rec.cameras[rec.images[i].camera_id]) for i in rec.reg_image_ids()}


def covisible_pairs(reconstruction, min_shared: int = 30) -> set[tuple[str, str]]:
    """Pairs of image names (sorted within the pair) that observe at least ``min_shared`` common 3D points."""
    rec = load_reconstruction(reconstruction)
    counts: dict[tuple[int, int], int] = {}
    for point in rec.points3D.values():
        ids = sorted({element.image_id for element in point.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                counts[ids[a], ids[b]] = counts.get((ids[a], ids[b]), 0) + 1
    names = {i: rec.images[i].name for i in rec.reg_image_ids()}
    return {tuple(sorted((names[a], names[b]))) for (a, b), n in counts.items() if n >= min_shared}
