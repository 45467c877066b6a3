"""Incremental SfM with pycolmap on a database this package wrote (or any COLMAP database)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pycolmap

from matcher.config import MappingConfig
from matcher.errors import ConfigError

__all__ = ["ReconstructionSummary", "reconstruct", "summarize"]


@dataclass
class ReconstructionSummary:
    """The numbers a user checks first."""

    registered_images: int
    total_images: int
    points3d: int
    mean_track_length: float
    mean_reprojection_error: float
    num_models: int

    def format(self) -> str:
        return (
            f"registered {self.registered_images}/{self.total_images} images, {self.points3d} 3D points, "
            f"mean track length {self.mean_track_length:.2f}, "
            f"mean reprojection error {self.mean_reprojection_error:.3f} px"
            + (f" ({self.num_models} models, largest kept)" if self.num_models > 1 else "")
        )


def summarize(rec: pycolmap.Reconstruction, total_images: int, num_models: int = 1) -> ReconstructionSummary:
    return ReconstructionSummary(
        registered_images=rec.num_reg_images(),
        total_images=total_images,
        points3d=rec.num_points3D(),
        mean_track_length=float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else 0.0,
        num_models=num_models,
    )


def reconstruct(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    config: MappingConfig | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[pycolmap.Reconstruction | None, ReconstructionSummary]:
    """Run ``pycolmap.incremental_mapping`` (or ``global_mapping``) and keep the largest model, in ``out_dir``.

    ``out_dir`` receives ``cameras.bin``, ``images.bin``, ``points3D.bin``, ``rigs.bin``, ``frames.bin`` of the
    largest model (the other models, if any, are left in ``out_dir/models/<k>``).

    Returns:
        (the largest reconstruction or None, its summary).
    """
    config = config or MappingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "models"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    if config.mapper not in ("incremental", "global"):
        raise ConfigError(f"mapping.mapper must be 'incremental' or 'global', got '{config.mapper}'")
    with pycolmap.Database.open(Path(db_path)) as db:
        total = db.num_images()
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(previous_level, 2)  # COLMAP's per-image INFO log drowns the progress bar
    try:
        if config.mapper == "global":
            options = pycolmap.GlobalPipelineOptions()
            options.num_threads = config.num_threads
            options.random_seed = config.seed
            options.min_num_matches = config.min_num_matches
            options.min_model_size = config.min_model_size
            models = pycolmap.global_mapping(Path(db_path), Path(image_dir), work, options=options)
        else:
            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = config.num_threads
            options.random_seed = config.seed
            options.min_model_size = config.min_model_size
            options.min_num_matches = config.min_num_matches
            options.mapper.init_min_tri_angle = config.init_min_tri_angle
            options.mapper.init_max_forward_motion = config.init_max_forward_motion
            models = pycolmap.incremental_mapping(
                Path(db_path), Path(image_dir), work, options=options, next_image_callback=on_image
            )
    finally:
        pycolmap.logging.minloglevel = previous_level
    if not models:
        return None, ReconstructionSummary(0, total, 0, 0.0, 0.0, 0)
    best_key = max(models, key=lambda k: (models[k].num_reg_images(), models[k].num_points3D()))
    best = models[best_key]
    best.write(out_dir)
    if len(models) == 1:
        shutil.rmtree(work)
    return best, summarize(best, total, len(models))
