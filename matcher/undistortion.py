"""Undistorted images and PINHOLE model for dense MVS, OpenMVS, NeRF and Gaussian-splatting tools.

``undistort(model_dir, image_dir, out_dir)`` runs pycolmap's ``undistort_images`` (COLMAP's
``image_undistorter --output_type COLMAP``) and writes::

    out_dir/images/NAME         undistorted images (PINHOLE), the size of their camera
    out_dir/sparse/             the undistorted model, flat, as COLMAP's patch_match_stereo and OpenMVS's
                                InterfaceCOLMAP read it
    out_dir/sparse/0/           the same model again, where Gaussian-splatting's and nerfstudio's COLMAP loaders
                                look for it
    out_dir/stereo/             COLMAP's MVS workspace (patch-match.cfg, fusion.cfg, depth/normal map folders)
    out_dir/run-colmap-*.sh     COLMAP's scripts for dense reconstruction

With ``text=True`` both model folders also hold the ``.txt`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pycolmap

from matcher.colmap_log import quiet_colmap
from matcher.errors import ConfigError
from matcher.mapping import resolve_model_dir
from matcher.threads import thread_budget

__all__ = ["UndistortSummary", "undistort"]


@dataclass
class UndistortSummary:
    """What was written: folder, number of undistorted images, and the PINHOLE cameras."""

    out_dir: str
    images: int
    cameras: int

    def format(self) -> str:
        return f"{self.out_dir} ({self.images} undistorted images, {self.cameras} PINHOLE cameras; model in sparse/ and sparse/0)"


def undistort(
    model_dir: Path, image_dir: Path, out_dir: Path, text: bool = False, threads: int | None = None
) -> UndistortSummary:
    """Undistort the registered images of the model in ``model_dir`` into ``out_dir`` (layout in the module doc)."""
    model_dir, out_dir = resolve_model_dir(Path(model_dir)), Path(out_dir)
    if not (model_dir / "images.bin").is_file() and not (model_dir / "images.txt").is_file():
        raise ConfigError(f"{model_dir}: no COLMAP model to undistort (no images.bin or images.txt)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: is a file, not a folder for the undistorted output")
    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_colmap():
        pycolmap.undistort_images(out_dir, model_dir, Path(image_dir), output_type="COLMAP",
                                  num_threads=thread_budget(threads))
    model = pycolmap.Reconstruction(out_dir / "sparse")
    (out_dir / "sparse" / "0").mkdir(exist_ok=True)
    model.write(out_dir / "sparse" / "0")
    if text:
        model.write_text(out_dir / "sparse")
        model.write_text(out_dir / "sparse" / "0")
    return UndistortSummary(str(out_dir), model.num_reg_images(), model.num_cameras())
