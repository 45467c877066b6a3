"""focal_prior: COLMAP's answer, also where it is given without asking COLMAP (a JPEG without EXIF focal)."""

from __future__ import annotations

from pathlib import Path

import pycolmap
import pytest
from PIL import Image

from matcher.colmap_db import _jpeg_without_focal, focal_prior

from conftest import require_shared


def _colmap(path: Path, width: int, height: int) -> tuple[float, bool]:
    camera = pycolmap.infer_camera_from_image(path, pycolmap.ImageReaderOptions())
    scale = max(width, height) / max(camera.width, camera.height)
    return camera.mean_focal_length() * scale, camera.has_prior_focal_length


@pytest.mark.parametrize("scene, name, shortcut", [
    ("entry-P10", "0003.jpg", True),   # Strecha images: no EXIF
    ("lund", "01.jpg", False),         # EXIF focal length and 35 mm equivalent
])
def test_focal_prior_is_colmaps_answer(scene: str, name: str, shortcut: bool) -> None:
    path = require_shared("scenes", scene, "images", name)
    with Image.open(path) as img:
        width, height = img.size
    assert _jpeg_without_focal(path) is shortcut
    focal, prior = focal_prior(path, width, height)
    expected_focal, expected_prior = _colmap(path, width, height)
    assert focal == pytest.approx(expected_focal, rel=1e-9) and prior == expected_prior


def test_a_copy_without_exif_gets_colmaps_guess(tmp_path: Path) -> None:
    src = require_shared("scenes", "lund", "images", "01.jpg")
    with Image.open(src) as img:
        img.save(tmp_path / "stripped.jpg")  # PIL writes no EXIF unless asked
        width, height = img.size
    assert _jpeg_without_focal(tmp_path / "stripped.jpg")
    assert focal_prior(tmp_path / "stripped.jpg", width, height) == (1.2 * max(width, height), False)
    assert _colmap(tmp_path / "stripped.jpg", width, height) == (pytest.approx(1.2 * max(width, height)), False)
