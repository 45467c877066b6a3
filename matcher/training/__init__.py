"""Training utilities: P×K batch sampling, patch-verification metrics and a homography patch set."""

from __future__ import annotations

from matcher.training.homography_patches import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    PatchSet,
    load_photo,
    make_homography_patches,
)
from matcher.training.metrics import average_precision, fpr95, fpr_at_recall, mean_average_precision
from matcher.training.sampler import PKSampler, verification_pairs

__all__ = [
    "HELDOUT_PHOTOS",
    "PKSampler",
    "PatchSet",
    "TRAIN_PHOTOS",
    "average_precision",
    "fpr95",
    "fpr_at_recall",
    "load_photo",
    "make_homography_patches",
    "mean_average_precision",
    "verification_pairs",
]
