"""SfM with pycolmap on a database this package wrote (or any COLMAP database), written as COLMAP's mapper does.

Layout of the output folder ``DIR`` (COLMAP's ``colmap mapper --output_path DIR``): one numbered folder per model,
``DIR/0`` the largest (most registered images, then most 3D points), ``DIR/1``... the others by size. Each holds
``cameras.bin``, ``images.bin``, ``points3D.bin``, ``rigs.bin``, ``frames.bin``, and with ``text=True`` also the
``.txt`` files of the same model. Earlier versions wrote the largest model flat into ``DIR``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pycolmap

from matcher.colmap_log import quiet_colmap
from matcher.config import MappingConfig
from matcher.errors import ConfigError
from matcher.threads import thread_budget

__all__ = ["ReconstructionSummary", "model_path", "reconstruct", "resolve_model_dir", "summarize"]

# COLMAP's incremental mapper needs an initial pair with this many inliers (IncrementalMapperOptions.init_min_num_inliers).
_INIT_MIN_INLIERS = pycolmap.IncrementalMapperOptions().init_min_num_inliers


def model_path(out_dir: Path, index: int = 0) -> Path:
    """Folder of model ``index`` of a reconstruction written to ``out_dir`` (0: the largest)."""
    return Path(out_dir) / str(index)


def resolve_model_dir(path: Path) -> Path:
    """``path`` if it holds a model, else ``path/0`` when that does (a mapper output folder given for a model)."""
    path = Path(path)
    return model_path(path) if not _has_model(path) and _has_model(model_path(path)) else path


def _has_model(folder: Path) -> bool:
    return (folder / "images.bin").is_file() or (folder / "images.txt").is_file()


@dataclass
class ReconstructionSummary:
    """The numbers a user checks first; ``failure`` says why nothing registered (empty otherwise)."""

    registered_images: int
    total_images: int
    points3d: int
    mean_track_length: float
    mean_reprojection_error: float
    num_models: int
    model_dir: str = ""
    failure: str = ""

    def format(self) -> str:
        if self.registered_images == 0 and self.failure:
            return f"registered 0/{self.total_images} images: {self.failure}"
        return (
            f"registered {self.registered_images}/{self.total_images} images, {self.points3d} 3D points, "
            f"mean track length {self.mean_track_length:.2f}, "
            f"mean reprojection error {self.mean_reprojection_error:.3f} px"
            + (f" ({self.num_models} models, the largest in {self.model_dir})" if self.num_models > 1 else "")
        )


def summarize(
    rec: pycolmap.Reconstruction, total_images: int, num_models: int = 1, model_dir: Path | str = ""
) -> ReconstructionSummary:
    return ReconstructionSummary(
        registered_images=rec.num_reg_images(),
        total_images=total_images,
        points3d=rec.num_points3D(),
        mean_track_length=float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else 0.0,
        num_models=num_models,
        model_dir=str(model_dir),
    )


def _why_no_model(db_path: Path, config: MappingConfig, total: int) -> str:
    """One line: why mapping gave no model, from what the database holds."""
    if total < 2:
        return f"the database holds {total} image(s); SfM needs at least 2"
    with pycolmap.Database.open(Path(db_path)) as db:
        _, inliers = db.read_two_view_geometry_num_inliers()
    usable = sum(1 for n in inliers if n >= config.min_num_matches)
    if usable == 0:
        return (f"no image pair has a verified geometry with at least {config.min_num_matches} inlier matches "
                f"(mapping.min_num_matches): the images may not overlap, or try more keypoints")
    if config.mapper == "global":
        return (f"global mapping found no model of at least {config.min_model_size} images "
                f"({usable} verified pairs)")
    strongest = max(inliers)
    return (f"the incremental mapper found no initial pair ({usable} verified pairs, the best with {strongest} "
            f"inliers; it needs {_INIT_MIN_INLIERS}+ inliers and a {config.init_min_tri_angle:g} deg triangulation "
            f"angle, which a capture moving straight ahead lacks): try --mapper global")


def _clear_models(out_dir: Path) -> None:
    """Remove numbered model folders an earlier run left in ``out_dir`` (nothing else is touched)."""
    for child in out_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and _has_model(child):
            shutil.rmtree(child)


def _shared_options(options: Any, config: MappingConfig, threads: int) -> None:
    """The settings both pipelines' options have (``IncrementalPipelineOptions``, ``GlobalPipelineOptions``)."""
    options.num_threads = threads
    options.random_seed = config.seed
    options.min_model_size = config.min_model_size
    options.min_num_matches = config.min_num_matches


def _incremental_options(config: MappingConfig, threads: int) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    _shared_options(options, config, threads)
    options.mapper.init_min_tri_angle = config.init_min_tri_angle
    options.mapper.init_max_forward_motion = config.init_max_forward_motion
    if not config.refine_intrinsics:  # COLMAP's --Mapper.ba_refine_* 0: keep known intrinsics fixed
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
    return options


def _global_options(config: MappingConfig, threads: int) -> pycolmap.GlobalPipelineOptions:
    options = pycolmap.GlobalPipelineOptions()
    _shared_options(options, config, threads)
    if not config.refine_intrinsics:
        ba = options.mapper.bundle_adjustment
        ba.refine_focal_length = ba.refine_principal_point = ba.refine_extra_params = False
    return options


def reconstruct(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    config: MappingConfig | None = None,
    on_image: Callable[[], None] | None = None,
    text: bool = False,
) -> tuple[pycolmap.Reconstruction | None, ReconstructionSummary]:
    """Run ``pycolmap.incremental_mapping`` (or ``global_mapping``) and write the models to ``out_dir/0``, ``/1``...

    ``config.num_threads`` <= 0 uses :func:`matcher.threads.thread_budget` (CPU affinity, ``OMP_NUM_THREADS``).
    ``text``: also write each model as COLMAP text files beside the binary ones.

    Returns:
        (the largest reconstruction or None, its summary; ``summary.failure`` says why when there is none).
    """
    config = config or MappingConfig()
    out_dir = Path(out_dir)
    if config.mapper not in ("incremental", "global"):
        raise ConfigError(f"mapping.mapper must be 'incremental' or 'global', got '{config.mapper}'")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: is a file, not a folder for the reconstruction")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".mapping"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    threads = config.num_threads if config.num_threads > 0 else thread_budget()
    with pycolmap.Database.open(Path(db_path)) as db:
        total = db.num_images()
    with quiet_colmap():  # COLMAP's per-image INFO log drowns the progress bar
        if config.mapper == "global":
            models = pycolmap.global_mapping(Path(db_path), Path(image_dir), work,
                                             options=_global_options(config, threads))
        else:
            models = pycolmap.incremental_mapping(
                Path(db_path), Path(image_dir), work, options=_incremental_options(config, threads),
                next_image_callback=on_image,
            )
    shutil.rmtree(work)
    _clear_models(out_dir)
    if not models:
        return None, ReconstructionSummary(0, total, 0, 0.0, 0.0, 0, failure=_why_no_model(db_path, config, total))
    ranked = sorted(models.values(), key=lambda m: (m.num_reg_images(), m.num_points3D()), reverse=True)
    for index, model in enumerate(ranked):
        folder = model_path(out_dir, index)
        folder.mkdir()
        model.write(folder)
        if text:
            model.write_text(folder)
    return ranked[0], summarize(ranked[0], total, len(ranked), model_path(out_dir))
