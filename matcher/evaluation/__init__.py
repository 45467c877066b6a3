"""Evaluation metrics for matcher: homographies (HPatches), relative poses, SfM models, plots, reports.

Pure functions, numpy in and numbers out; pixel coordinates follow OpenCV (top-left pixel centre at 0).
"""

from .homography import (
    corner_error,
    homography_accuracy,
    load_hpatches_sequence,
    mean_matching_accuracy,
    reprojection_errors,
    warp_points,
)
from .plots import draw_matches, plot_accuracy_curves
from .pose import (
    StrechaCamera,
    camera_from_projection,
    estimate_relative_pose,
    pose_auc,
    read_strecha_camera,
    relative_pose,
    relative_pose_error,
    rotation_angle_deg,
    scale_intrinsics,
    vector_angle_deg,
)
from .report import format_value, markdown_table, write_report
from .sfm import (
    absolute_pose_errors,
    align_similarity,
    compare_to_cameras,
    compare_to_strecha,
    reconstruction_poses,
    reconstruction_summary,
)

__all__ = [
    "StrechaCamera",
    "absolute_pose_errors",
    "align_similarity",
    "camera_from_projection",
    "compare_to_cameras",
    "compare_to_strecha",
    "corner_error",
    "draw_matches",
    "estimate_relative_pose",
    "format_value",
    "homography_accuracy",
    "load_hpatches_sequence",
    "markdown_table",
    "mean_matching_accuracy",
    "plot_accuracy_curves",
    "pose_auc",
    "read_strecha_camera",
    "reconstruction_poses",
    "reconstruction_summary",
    "relative_pose",
    "relative_pose_error",
    "reprojection_errors",
    "rotation_angle_deg",
    "scale_intrinsics",
    "vector_angle_deg",
    "warp_points",
]
