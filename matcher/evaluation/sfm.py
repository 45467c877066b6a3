"""Metrics of a sparse reconstruction: summary statistics and camera poses against ground truth.

Poses are cam_from_world rotations R (x_cam = R X + t) and camera centres C = -R^T t. The estimated
model has an arbitrary gauge, so its centres are first aligned to the ground-truth centres with a
similarity (scale, rotation, translation); errors are then in ground-truth units (metres for Strecha).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .pose import nearest_rotation, read_strecha_camera, rotation_angle_deg

if TYPE_CHECKING:
    import pycolmap

    from .pose import StrechaCamera

__all__ = [
    "absolute_pose_errors",
    "rotation_alignment",
    "align_similarity",
    "compare_to_cameras",
    "compare_to_strecha",
    "reconstruction_poses",
    "reconstruction_summary",
]


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991) for (N, 3) arrays."""
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_src, dst - mu_dst
    var_src = np.mean(np.sum(a * a, axis=1))
    if var_src <= 1e-24:
        raise ValueError("source points are all identical: the similarity is undefined")
    U, D, Vt = np.linalg.svd(b.T @ a / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / var_src)
    return scale, R, mu_dst - scale * R @ mu_src


def _residuals(src, dst, scale, R, t) -> np.ndarray:
    return np.linalg.norm(scale * src @ R.T + t - dst, axis=1)


def align_similarity(
    src: np.ndarray, dst: np.ndarray, robust: bool = False, max_subsets: int = 2000
) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (scale, R (3, 3), t (3,)) with dst ~ scale * R @ src + t, for (N, 3) points, N >= 3.

    robust=False: Umeyama least squares on all points. robust=True (deterministic, no random
    sampling): least median of residuals over 3-point subsets (all of them, or ``max_subsets``
    taken with a fixed seed), then Umeyama on the points within 2.5 robust sigmas; tolerates up to
    roughly half the points being wrong. Raises ValueError for N < 3 or coincident source points.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if len(src) != len(dst):
        raise ValueError(f"src and dst differ in length: {len(src)} != {len(dst)}")
    if len(src) < 3:
        raise ValueError(f"need at least 3 point pairs for a similarity, got {len(src)}")
    if not robust or len(src) == 3:
        return _umeyama(src, dst)
    subsets = list(itertools.combinations(range(len(src)), 3))
    if len(subsets) > max_subsets:
        rng = np.random.default_rng(0)
        subsets = [subsets[i] for i in rng.choice(len(subsets), max_subsets, replace=False)]
    best, best_median = None, np.inf
    for subset in subsets:
        idx = list(subset)
        try:
            model = _umeyama(src[idx], dst[idx])
        except ValueError:
            continue
        median = float(np.median(_residuals(src, dst, *model)))
        if median < best_median:
            best, best_median = model, median
    if best is None:
        return _umeyama(src, dst)
    sigma = 1.4826 * best_median
    inliers = _residuals(src, dst, *best) <= max(2.5 * sigma, 1e-12)
    return _umeyama(src[inliers], dst[inliers]) if inliers.sum() >= 3 else best


def absolute_pose_errors(
    R_est: np.ndarray,
    C_est: np.ndarray,
    R_gt: np.ndarray,
    C_gt: np.ndarray,
    robust: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera (rotation error deg (N,), position error (N,) in ground-truth units).

    R_est, R_gt: (N, 3, 3) cam_from_world rotations; C_est, C_gt: (N, 3) camera centres, same order.

    * Positions: the estimated centres are aligned to the ground truth with :func:`align_similarity`
      (C_gt ~ s Q C_est + t), and the residual distances are reported.
    * Rotations: the global rotation Q is taken from the camera orientations themselves (the chordal L2 mean
      of R_gtᵀ R_est, projected onto SO(3)), and the angle of R_gt vs R_est Qᵀ is reported. Centres alone
      fix Q poorly when they are nearly coplanar or collinear (a walk along a facade, as in entry-P10, where
      the centre-based Q adds about 0.4° to every camera), while orientations fix it for any layout.

    Needs N >= 3 non-collinear centres for the positions.
    """
    R_est = np.asarray(R_est, dtype=np.float64).reshape(-1, 3, 3)
    R_gt = np.asarray(R_gt, dtype=np.float64).reshape(-1, 3, 3)
    C_est = np.asarray(C_est, dtype=np.float64).reshape(-1, 3)
    C_gt = np.asarray(C_gt, dtype=np.float64).reshape(-1, 3)
    if not len(R_est) == len(R_gt) == len(C_est) == len(C_gt):
        raise ValueError("R_est, C_est, R_gt and C_gt must hold the same number of cameras")
    scale, Q, t = align_similarity(C_est, C_gt, robust=robust)
    position = _residuals(C_est, C_gt, scale, Q, t)
    Q_rot = rotation_alignment(R_est, R_gt, robust=robust)
    rotation = np.array([rotation_angle_deg(Rg @ Q_rot @ Re.T) for Re, Rg in zip(R_est, R_gt)])
    return rotation, position


def _chordal_mean(Q: np.ndarray) -> np.ndarray:
    return nearest_rotation(Q.sum(axis=0))


def rotation_alignment(R_est: np.ndarray, R_gt: np.ndarray, robust: bool = False) -> np.ndarray:
    """The rotation Q (3, 3) that best maps estimated orientations onto the ground truth: R_gt ≈ R_est Qᵀ.

    Chordal L2 mean of the per-camera estimates Q_i = R_gt_iᵀ R_est_i, projected onto SO(3). With
    ``robust``, the candidate Q_i with the smallest median angle to the others is found first, and the mean is
    taken over the cameras within 3 median angles of it (so one bad camera does not tilt all the others).
    """
    Q = np.einsum("nji,njk->nik", np.asarray(R_gt, np.float64), np.asarray(R_est, np.float64))
    if not robust or len(Q) < 3:
        return _chordal_mean(Q)
    angles = np.array([[rotation_angle_deg(a @ b.T) for b in Q] for a in Q])
    medians = np.median(angles, axis=1)
    best = int(np.argmin(medians))
    keep = angles[best] <= max(3.0 * medians[best], 1e-9)
    return _chordal_mean(Q[keep])


def reconstruction_poses(rec: "pycolmap.Reconstruction") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{image name: (cam_from_world R (3, 3), centre C (3,))}`` for the registered images of rec."""
    poses = {}
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        pose = image.cam_from_world()  # a method in pycolmap >= 3.12
        poses[image.name] = (
            np.asarray(pose.rotation.matrix(), dtype=np.float64),
            np.asarray(image.projection_center(), dtype=np.float64).ravel(),
        )
    return poses


def reconstruction_summary(
    rec: "pycolmap.Reconstruction", recompute_errors: bool = False
) -> dict[str, Any]:
    """Headline numbers of a reconstruction.

    Keys: registered_images, total_images, points3D, observations, mean_track_length,
    mean_reprojection_error (pixels, COLMAP's stored per-point errors; ``recompute_errors=True``
    first refreshes them in place with ``rec.update_point_3d_errors()``), observations_per_image
    (mean over registered images).
    """
    if recompute_errors:
        rec.update_point_3d_errors()
    empty = rec.num_points3D() == 0
    return {
        "registered_images": int(rec.num_reg_images()),
        "total_images": int(rec.num_images()),
        "points3D": int(rec.num_points3D()),
        "observations": int(rec.compute_num_observations()),
        "mean_track_length": float("nan") if empty else float(rec.compute_mean_track_length()),
        "mean_reprojection_error": float("nan")
        if empty
        else float(rec.compute_mean_reprojection_error()),
        "observations_per_image": float("nan")
        if rec.num_reg_images() == 0
        else float(rec.compute_mean_observations_per_reg_image()),
    }


def compare_to_strecha(
    rec: "pycolmap.Reconstruction", gt_dir: str | Path, robust: bool = False
) -> dict[str, Any]:
    """Camera poses of rec against Strecha ground truth ``gt_dir/<image name>.camera``.

    gt_dir: the ``gt_dense_cameras`` folder, or the scene folder that contains it. Registered images
    are matched by file name (``sub/0000.jpg`` -> ``0000.jpg.camera``). Returns what
    :func:`compare_to_cameras` returns, with num_ground_truth the number of ``.camera`` files.
    """
    gt_dir = Path(gt_dir)
    if (gt_dir / "gt_dense_cameras").is_dir():
        gt_dir = gt_dir / "gt_dense_cameras"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth camera folder not found: {gt_dir}")
    cameras = {}
    for name in reconstruction_poses(rec):
        path = gt_dir / f"{Path(name).name}.camera"
        if path.is_file():
            cameras[Path(name).name] = read_strecha_camera(path)
    result = compare_to_cameras(rec, cameras, robust=robust)
    result["num_ground_truth"] = len(list(gt_dir.glob("*.camera")))
    return result


def compare_to_cameras(
    rec: "pycolmap.Reconstruction", cameras: dict[str, "StrechaCamera"], robust: bool = False
) -> dict[str, Any]:
    """Camera poses of rec against ground-truth cameras {image file name: StrechaCamera}.

    Registered images are matched by file name (``sub/0000.jpg`` -> ``0000.jpg``). Returns
    num_matched (registered images with a ground-truth camera), num_registered, num_ground_truth,
    rotation_error_deg_{median,mean}, position_error_{median,mean} (ground-truth units, after a
    similarity alignment of the centres) and the per-image errors under ``per_image`` as
    ``{name: (rotation deg, position)}``. With fewer than 3 matched images the errors are NaN.
    """
    estimated = reconstruction_poses(rec)
    names, R_est, C_est, R_gt, C_gt = [], [], [], [], []
    for name, (R, C) in sorted(estimated.items()):
        camera = cameras.get(Path(name).name)
        if camera is None:
            continue
        names.append(name)
        R_est.append(R)
        C_est.append(C)
        R_gt.append(camera.R)
        C_gt.append(camera.center)
    result: dict[str, Any] = {
        "num_matched": len(names),
        "num_registered": len(estimated),
        "num_ground_truth": len(cameras),
    }
    if len(names) < 3:
        nan = float("nan")
        result.update(
            rotation_error_deg_median=nan,
            rotation_error_deg_mean=nan,
            position_error_median=nan,
            position_error_mean=nan,
            per_image={},
        )
        return result
    rotation, position = absolute_pose_errors(R_est, C_est, R_gt, C_gt, robust=robust)
    result.update(
        rotation_error_deg_median=float(np.median(rotation)),
        rotation_error_deg_mean=float(np.mean(rotation)),
        position_error_median=float(np.median(position)),
        position_error_mean=float(np.mean(position)),
        per_image={n: (float(r), float(p)) for n, r, p in zip(names, rotation, position)},
    )
    return result
