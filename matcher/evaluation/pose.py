"""Relative-pose metrics: Strecha ground truth, pose errors, AUC, and an OpenCV essential-matrix baseline.

Conventions: poses are ``cam_from_world`` (x_cam = R @ X_world + t), as in COLMAP; a relative pose
(R, t) of a pair maps camera-1 coordinates to camera-2 coordinates (``cam2_from_cam1``). Angles are in
degrees. Pixel coordinates follow OpenCV: the centre of the top-left pixel is (0, 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "StrechaCamera",
    "camera_from_projection",
    "estimate_relative_pose",
    "nearest_rotation",
    "pose_auc",
    "read_strecha_camera",
    "relative_pose",
    "relative_pose_error",
    "rotation_angle_deg",
    "scale_intrinsics",
    "vector_angle_deg",
]


@dataclass(frozen=True)
class StrechaCamera:
    """A calibrated camera read from a Strecha ``.camera`` file.

    K: (3, 3) intrinsics for an image of ``width`` x ``height`` pixels (OpenCV pixel centres).
    R: (3, 3) cam_from_world rotation, i.e. the transpose of the file's R (re-orthonormalised: the
    files print 6 digits, so R R^T = I only to ~1e-6).
    t: (3,) cam_from_world translation, ``-R_file^T C``.
    center: (3,) camera centre C in world units (metres for the Strecha scenes).
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    center: np.ndarray
    width: int
    height: int

    @property
    def P(self) -> np.ndarray:
        """(3, 4) projection matrix K [R | t]."""
        return self.K @ np.hstack([self.R, self.t[:, None]])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) to pixels; returns (xy (N, 2), depth (N,)) (depth > 0: in front)."""
        x_cam = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ self.R.T + self.t
        depth = x_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = (x_cam @ self.K.T)[:, :2] / depth[:, None]
        return xy, depth


def scale_intrinsics(K: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics (3, 3) for an image resized by (scale_x, scale_y), e.g. new_width / old_width.

    With OpenCV pixel centres the principal point maps as c' = s (c + 0.5) - 0.5 (the image edges, not
    the centres of the first pixels, stay aligned); focal lengths and skew scale by s.
    """
    S = np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0, 0, 1]])
    return S @ np.asarray(K, dtype=np.float64)


def read_strecha_camera(
    path: str | Path, image_size: tuple[int, int] | None = None
) -> StrechaCamera:
    """Read a Strecha ``.camera`` file (K; ``0 0 0``; R; C; ``W H``), where P = K [R^T | -R^T C].

    image_size: (width, height) of the image actually used. If it differs from the file's ``W H``, K is
    rescaled with :func:`scale_intrinsics` and width/height are replaced. (The files in
    ``shared/data/scenes`` were already rescaled to the 1600x1067 JPEGs, so nothing happens there.)
    """
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(rows) < 9:
        raise ValueError(f"{path}: expected 9 lines in a Strecha camera file, got {len(rows)}")
    try:
        K = np.array(rows[0:3], dtype=np.float64)
        R_file = np.array(rows[4:7], dtype=np.float64)
        center = np.array(rows[7], dtype=np.float64)
        width, height = (int(round(float(v))) for v in rows[8][:2])
    except ValueError as error:
        raise ValueError(f"{path}: malformed Strecha camera file ({error})") from None
    if K.shape != (3, 3) or R_file.shape != (3, 3) or center.shape != (3,):
        raise ValueError(f"{path}: malformed Strecha camera file")
    if image_size is not None and tuple(image_size) != (width, height):
        K = scale_intrinsics(K, image_size[0] / width, image_size[1] / height)
        width, height = int(image_size[0]), int(image_size[1])
    R = nearest_rotation(R_file.T)
    return StrechaCamera(K=K, R=R, t=-R @ center, center=center, width=width, height=height)


def camera_from_projection(P: np.ndarray, width: int, height: int) -> StrechaCamera:
    """The calibrated camera of a (3, 4) projection matrix P ~ K [R | t] (e.g. buddha's ``cameras/STEM_P.txt``).

    K is scaled to K[2, 2] = 1 with a positive diagonal, R is a rotation (the overall sign of P is chosen so), and
    the camera centre is in P's world units (for buddha: AliceVision's, not metres).
    """
    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    K, R, C_h = cv2.decomposeProjectionMatrix(P)[:3]
    signs = np.diag(np.sign(np.diag(K)))  # K D and D R with D = D^-1: the same product, positive focal lengths
    K, R = K @ signs, signs @ R
    K = K / K[2, 2]
    R = nearest_rotation(R)
    center = (C_h[:3, 0] / C_h[3, 0]).astype(np.float64)
    return StrechaCamera(K=K, R=R, t=-R @ center, center=center, width=int(width), height=int(height))


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation matrix closest to M (3, 3) in the Frobenius norm (its projection onto SO(3))."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle (degrees, in [0, 180]) of the rotation matrix R (3, 3); accurate for small angles too."""
    R = np.asarray(R, dtype=np.float64)
    sin2 = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    cos2 = np.trace(R) - 1.0
    return float(np.degrees(np.arctan2(sin2, cos2)))


def vector_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees, in [0, 180]) between 3-vectors a and b; NaN if either is zero."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if not (np.linalg.norm(a) > 0 and np.linalg.norm(b) > 0):
        return float("nan")
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), a @ b)))


def relative_pose(
    R1: np.ndarray, t1: np.ndarray, R2: np.ndarray, t2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """cam2_from_cam1 (R (3, 3), t (3,)) from two cam_from_world poses."""
    R = np.asarray(R2) @ np.asarray(R1).T
    return R, np.asarray(t2, dtype=np.float64) - R @ np.asarray(t1, dtype=np.float64)


def relative_pose_error(
    R_est: np.ndarray | None,
    t_est: np.ndarray | None,
    R_gt: np.ndarray,
    t_gt: np.ndarray,
    ignore_translation_sign: bool = True,
) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees of an estimated relative pose.

    Rotation error: angle of R_est R_gt^T. Translation error: angle between t_est and t_gt (scale is
    unobservable from two views). With ``ignore_translation_sign`` (default, as in the SuperGlue /
    LightGlue benchmarks) it is min(e, 180 - e), so it lies in [0, 90]. A failed estimate (None) or a
    zero t_est gives (inf, inf) for use in :func:`pose_auc`. A zero t_gt raises ValueError.
    """
    if np.linalg.norm(t_gt) == 0:
        raise ValueError("ground-truth translation is zero: the translation direction is undefined")
    if R_est is None or t_est is None:
        return float("inf"), float("inf")
    error_R = rotation_angle_deg(np.asarray(R_est) @ np.asarray(R_gt).T)
    error_t = vector_angle_deg(t_est, t_gt)
    if np.isnan(error_t):
        return float("inf"), float("inf")
    if ignore_translation_sign:
        error_t = min(error_t, 180.0 - error_t)
    return error_R, error_t


def pose_auc(
    errors_deg: Iterable[float], thresholds: Iterable[float] = (1, 2, 5, 10, 20)
) -> dict[float, float]:
    """Area under the cumulative recall-vs-error curve up to each threshold, divided by the threshold.

    The SuperGlue/LightGlue definition: errors are sorted, the curve passes through (0, 0) and
    (e_i, i / N), is linear between consecutive points, and is held flat from the last error <= t to t.
    Inf/NaN errors (failures) count in N but never reach the curve. Errors usually are
    max(rotation error, translation error) per pair. Returns ``{t: auc}`` with auc in [0, 1]; empty -> 0.
    """
    thresholds = list(thresholds)
    errors = np.asarray(list(errors_deg), dtype=np.float64).ravel()
    if errors.size == 0:
        return {t: 0.0 for t in thresholds}
    errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    recall = np.arange(1, errors.size + 1) / errors.size
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = {}
    for t in thresholds:
        n = int(np.searchsorted(errors, t, side="right"))  # points (e, r) with e <= t
        x = np.concatenate([errors[:n], [t]])
        y = np.concatenate([recall[:n], [recall[n - 1]]])
        area = float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
        aucs[t] = area / t
    return aucs


def estimate_relative_pose(
    xy1: np.ndarray,
    xy2: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    threshold_px: float = 1.0,
    confidence: float = 0.99999,
    method: str = "magsac",
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Relative pose cam2_from_cam1 from matches, with cv2.findEssentialMat + cv2.recoverPose.

    xy1, xy2: (M, 2) matched pixels in image 1 / image 2; K1, K2: (3, 3) intrinsics. Points are
    normalised by the intrinsics and the threshold becomes threshold_px / mean focal length.
    method: "magsac" (cv2.USAC_MAGSAC) or "ransac" (cv2.RANSAC). Returns (R (3, 3), t (3,) unit norm,
    inlier mask (M,) bool of the essential-matrix inliers), or None with fewer than 5 matches or no E.
    When OpenCV returns several E candidates, the one with most points in front of both cameras wins.
    """
    methods = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    xy1 = np.asarray(xy1, dtype=np.float64).reshape(-1, 2)
    xy2 = np.asarray(xy2, dtype=np.float64).reshape(-1, 2)
    if len(xy1) != len(xy2):
        raise ValueError(f"xy1 and xy2 differ in length: {len(xy1)} != {len(xy2)}")
    if len(xy1) < 5:
        return None
    K1 = np.asarray(K1, dtype=np.float64)
    K2 = np.asarray(K2, dtype=np.float64)
    n1 = _normalise(xy1, K1)
    n2 = _normalise(xy2, K2)
    focal = np.mean([K1[0, 0], K1[1, 1], K2[0, 0], K2[1, 1]])
    E, mask = cv2.findEssentialMat(
        n1, n2, np.eye(3), method=methods[method], prob=confidence, threshold=threshold_px / focal
    )
    if E is None or mask is None:
        return None
    best = None
    for E_k in np.split(E, len(E) // 3):
        n_good, R, t, _ = cv2.recoverPose(E_k, n1, n2, np.eye(3), mask=mask.copy())
        if best is None or n_good > best[0]:
            best = (n_good, R, t.ravel())
    _, R, t = best
    return R, t / np.linalg.norm(t), mask.ravel() > 0


def _normalise(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels (M, 2) -> normalised image coordinates (M, 2) via K^-1 (skew included)."""
    homogeneous = np.hstack([xy, np.ones((len(xy), 1))])
    return (homogeneous @ np.linalg.inv(K).T)[:, :2]
