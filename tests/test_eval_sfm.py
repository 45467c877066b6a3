"""SfM metrics: similarity alignment, absolute pose errors, reconstruction summary, Strecha comparison."""

import math
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from conftest import shared_data
from matcher.evaluation import (
    absolute_pose_errors,
    align_similarity,
    compare_to_strecha,
    read_strecha_camera,
    reconstruction_poses,
    reconstruction_summary,
)


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * math.radians(degrees))[0]


# a known similarity: X_new = S * Q @ X + T
S, Q, T = 2.5, rotation([0.3, -1.0, 0.4], 40.0), np.array([1.0, -2.0, 0.5])


def transform_cameras(R_gt, C_gt):
    """The same cameras in the new world frame: R Q^T, S Q C + T."""
    return [R @ Q.T for R in R_gt], [S * Q @ C + T for C in C_gt]


def random_cameras(n, seed=0):
    rng = np.random.default_rng(seed)
    R = [rotation(rng.normal(size=3), rng.uniform(0, 90)) for _ in range(n)]
    C = rng.uniform(-5, 5, size=(n, 3))
    return R, C


# --- alignment ----------------------------------------------------------------------------------------


def test_align_similarity_recovers_known_transform():
    src = np.random.default_rng(0).normal(size=(20, 3))
    dst = S * src @ Q.T + T
    scale, R, t = align_similarity(src, dst)
    assert scale == pytest.approx(S, rel=1e-12)
    np.testing.assert_allclose(R, Q, atol=1e-12)
    np.testing.assert_allclose(t, T, atol=1e-12)
    # exactly three points suffice
    scale, R, t = align_similarity(src[:3], dst[:3])
    assert scale == pytest.approx(S, rel=1e-12)
    np.testing.assert_allclose(R, Q, atol=1e-12)


def test_align_similarity_never_returns_a_reflection():
    src = np.random.default_rng(1).normal(size=(10, 3))
    mirrored = src * [1.0, 1.0, -1.0]
    _, R, _ = align_similarity(src, mirrored)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_robust_alignment_ignores_outliers():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(12, 3))
    dst = S * src @ Q.T + T
    dst[[1, 5, 8]] += rng.uniform(5, 20, size=(3, 3))  # a quarter of the points wrong
    scale, R, t = align_similarity(src, dst, robust=True)
    assert scale == pytest.approx(S, rel=1e-9)
    np.testing.assert_allclose(R, Q, atol=1e-9)
    np.testing.assert_allclose(t, T, atol=1e-9)
    scale_ls, _, _ = align_similarity(src, dst)  # plain least squares is pulled away
    assert abs(scale_ls - S) > 1e-3


def test_align_similarity_rejects_degenerate_input():
    with pytest.raises(ValueError):
        align_similarity(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        align_similarity(np.ones((5, 3)), np.zeros((5, 3)))


# --- absolute pose errors -----------------------------------------------------------------------------


def test_absolute_errors_are_zero_for_a_transformed_copy():
    R_gt, C_gt = random_cameras(6)
    R_est, C_est = transform_cameras(R_gt, C_gt)
    rotation_errors, position_errors = absolute_pose_errors(R_est, C_est, R_gt, C_gt)
    assert rotation_errors.shape == position_errors.shape == (6,)
    np.testing.assert_allclose(rotation_errors, 0.0, atol=1e-6)
    np.testing.assert_allclose(position_errors, 0.0, atol=1e-9)


def test_absolute_errors_of_known_perturbations():
    R_gt, C_gt = random_cameras(8, seed=3)
    R_est, C_est = transform_cameras(R_gt, C_gt)
    R_est[2] = rotation([1.0, 2.0, 3.0], 2.0) @ R_est[2]  # 2 degrees off, camera frame
    C_est[5] = C_est[5] + S * np.array([0.0, 0.3, 0.4])  # 0.5 gt units off
    rotation_errors, position_errors = absolute_pose_errors(R_est, C_est, R_gt, C_gt, robust=True)
    expected_rotation = np.zeros(8)
    expected_rotation[2] = 2.0
    expected_position = np.zeros(8)
    expected_position[5] = 0.5
    np.testing.assert_allclose(rotation_errors, expected_rotation, atol=1e-6)
    np.testing.assert_allclose(position_errors, expected_position, atol=1e-9)


# --- pycolmap reconstructions -------------------------------------------------------------------------


def build_reconstruction(poses, offset=(0.0, 0.0), n_points=20, seed=0, unregistered=()):
    """Reconstruction with a PINHOLE camera, images ``name -> (R, t)`` and points seen by all images.

    Keypoints are the exact projections plus ``offset`` pixels, so every reprojection error is |offset|.
    """
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(
        camera_id=1, model_name="PINHOLE", focal_length=500.0, width=640, height=480
    )
    rec.add_camera_with_trivial_rig(camera)
    centres = np.array([-R.T @ t for R, t in poses.values()])
    X = centres.mean(axis=0) + rng.uniform(-1, 1, size=(n_points, 3))
    X += 8.0 * np.mean([R[2] for R, _ in poses.values()], axis=0)  # in front of the cameras
    for image_id, (name, (R, t)) in enumerate(poses.items(), start=1):
        x = X @ R.T + t
        uv = 500.0 * x[:, :2] / x[:, 2:] + [320.0, 240.0] + offset
        image = pycolmap.Image(name=name, keypoints=uv, camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
    for j in range(n_points):
        track = pycolmap.Track()
        for image_id in range(1, len(poses) + 1):
            track.add_element(image_id, j)
        point_id = rec.add_point3D(X[j], track)
        for image_id in range(1, len(poses) + 1):
            rec.image(image_id).set_point3D_for_point2D(j, point_id)
    for k, name in enumerate(unregistered, start=len(poses) + 1):
        image = pycolmap.Image(name=name, keypoints=np.zeros((0, 2)), camera_id=1, image_id=k)
        rec.add_image_with_trivial_frame(image)
    return rec


def simple_poses():
    return {f"{i:04d}.jpg": (rotation([0, 1, 0], 5.0 * i), np.array([-0.5 * i, 0.0, 0.0])) for i in range(3)}


def test_reconstruction_summary_of_a_hand_built_model():
    rec = build_reconstruction(simple_poses(), offset=(0.3, 0.0), unregistered=["lost.jpg"])
    summary = reconstruction_summary(rec, recompute_errors=True)
    assert summary == {
        "registered_images": 3,
        "total_images": 4,
        "points3D": 20,
        "observations": 60,
        "mean_track_length": pytest.approx(3.0),
        "mean_reprojection_error": pytest.approx(0.3, abs=1e-6),
        "observations_per_image": pytest.approx(20.0),
    }
    empty = reconstruction_summary(pycolmap.Reconstruction())
    assert empty["registered_images"] == 0 and math.isnan(empty["mean_track_length"])


def test_reconstruction_poses_reads_cam_from_world():
    poses = simple_poses()
    read = reconstruction_poses(build_reconstruction(poses, unregistered=["lost.jpg"]))
    assert sorted(read) == sorted(poses)
    for name, (R, t) in poses.items():
        np.testing.assert_allclose(read[name][0], R, atol=1e-12)
        np.testing.assert_allclose(read[name][1], -R.T @ t, atol=1e-12)


def test_compare_to_strecha_on_a_transformed_copy_of_the_ground_truth():
    gt_dir = shared_data() / "scenes" / "entry-P10" / "gt_dense_cameras"
    if not gt_dir.is_dir():
        pytest.skip(f"real data not found at {gt_dir} (set MATCHER_SHARED_DATA)")
    cameras = {p.name.removesuffix(".camera"): read_strecha_camera(p) for p in sorted(gt_dir.glob("*.camera"))}
    assert len(cameras) == 10
    R_new, C_new = transform_cameras([c.R for c in cameras.values()], [c.center for c in cameras.values()])
    poses = {name: (R, -R @ C) for name, R, C in zip(cameras, R_new, C_new)}
    poses["images/0003.jpg"] = poses.pop("0003.jpg")  # names may carry a sub-folder
    poses["extra.jpg"] = (np.eye(3), np.zeros(3))  # registered, but without ground truth
    rec = build_reconstruction(poses, n_points=5)
    result = compare_to_strecha(rec, gt_dir)
    assert (result["num_matched"], result["num_registered"], result["num_ground_truth"]) == (10, 11, 10)
    assert result["rotation_error_deg_median"] == pytest.approx(0.0, abs=1e-5)
    assert result["rotation_error_deg_mean"] == pytest.approx(0.0, abs=1e-5)
    assert result["position_error_median"] == pytest.approx(0.0, abs=1e-9)
    assert result["position_error_mean"] == pytest.approx(0.0, abs=1e-9)
    assert "images/0003.jpg" in result["per_image"]
    assert compare_to_strecha(rec, gt_dir.parent)["num_matched"] == 10  # the scene folder works too
    # fewer than 3 images with ground truth: counts, but no errors
    few = compare_to_strecha(build_reconstruction({"0000.jpg": poses["0000.jpg"], "x.jpg": poses["extra.jpg"]}), gt_dir)
    assert few["num_matched"] == 1 and math.isnan(few["rotation_error_deg_median"])
    with pytest.raises(FileNotFoundError):
        compare_to_strecha(rec, gt_dir / "missing")
