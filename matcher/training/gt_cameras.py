"""Ground-truth cameras of the shared scenes, as 3×4 projection matrices in each image's pixel frame.

Two formats (../shared/data/README.md and each scene's SOURCE.txt):

* Strecha ``gt_dense_cameras/NAME.camera`` (castle-P19, castle-P30, entry-P10): K (3 rows); ``0 0 0``; R (3 rows);
  the camera centre C (1 row); ``W H``. P = K [Rᵀ | −Rᵀ C].
* ``cameras/STEM_P.txt`` (buddha): a 3×4 projection matrix, already rescaled to the shared (downscaled) images;
  image ``00006._c.jpg`` has ``cameras/00006_P.txt``.

Pixel centres are at integer coordinates (the pipeline's convention), which is the convention the shared files
were rescaled with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matcher.images import list_images

__all__ = ["read_strecha_camera", "normalise_projection", "camera_centre", "load_scene_cameras"]


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
