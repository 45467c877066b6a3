"""Training utilities: P×K batch sampling, miners and other trainer hooks, patch-verification metrics and a
homography patch set."""

from __future__ import annotations

from matcher.training.homography_patches import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    PatchSet,
    load_photo,
    make_homography_patches,
)
from matcher.training.hooks import TrainingHook
from matcher.training.metrics import average_precision, fpr95, fpr_at_recall, mean_average_precision
from matcher.training.miners import SmartMiner
from matcher.training.otg import OnlineThresholdGenerator
from matcher.training.sampler import PKSampler, verification_pairs

__all__ = [
    "HELDOUT_PHOTOS",
    "OnlineThresholdGenerator",
    "PKSampler",
    "PatchSet",
    "SmartMiner",
    "TRAIN_PHOTOS",
    "TrainingHook",
    "average_precision",
    "fpr95",
    "fpr_at_recall",
    "load_photo",
    "make_homography_patches",
    "mean_average_precision",
    "verification_pairs",
]
