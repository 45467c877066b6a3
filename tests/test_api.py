"""The Python API and packaging: a light `import matcher`, its entry points, py.typed, the licence, the README."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pycolmap
import pytest

import matcher
from conftest import REPO

SETTINGS = {"images": {"max_edge": 640}, "detection": {"max_keypoints": 1024}}


def test_import_is_light_and_gives_the_version() -> None:
    code = ("import sys, matcher; print(matcher.__version__); "
            "print(sorted(m for m in ('torch', 'pycolmap', 'cv2', 'kornia', 'h5py') if m in sys.modules))")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert lines[0] == version("matcher") == pyproject["project"]["version"] == matcher.__version__
    assert lines[1] == "[]"


def test_entry_points_are_the_ones_the_cli_calls() -> None:
    import matcher.api

    for name in ("match", "reconstruct", "undistort"):
        assert getattr(matcher, name) is getattr(matcher.api, name)
        assert name in matcher.__all__
    cli_source = (REPO / "matcher" / "cli.py").read_text()
    assert "from matcher.api import match" in cli_source and "from matcher.api import reconstruct" in cli_source
    with pytest.raises(AttributeError):
        matcher.no_such_thing  # noqa: B018


def test_match_reconstruct_undistort_from_python(small_scene: Path, tmp_path: Path) -> None:
    report = matcher.match(small_scene, tmp_path / "db.db", "rootsift", SETTINGS, reconstruct=tmp_path / "sparse",
                           progress=False)
    assert report.reconstruction.registered_images == 4
    assert report.reconstruction.model_dir == str(tmp_path / "sparse" / "0")
    summary = matcher.reconstruct(tmp_path / "db.db", small_scene, tmp_path / "again", threads=1)
    assert summary.registered_images == 4 and summary.failure == ""
    undistorted = matcher.undistort(tmp_path / "again", small_scene, tmp_path / "dense")  # DIR/0 is found
    assert undistorted.images == 4
    model = pycolmap.Reconstruction(tmp_path / "dense" / "sparse" / "0")
    assert {c.model for c in model.cameras.values()} == {pycolmap.CameraModelId.PINHOLE}
    config = matcher.load_config("rootsift")
    assert isinstance(config, matcher.PipelineConfig) and config.descriptor.name == "rootsift"


def test_wheel_carries_py_typed_and_the_mit_licence(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = zipfile.ZipFile(next(tmp_path.glob("matcher-*.whl")))
    names = set(wheel.namelist())
    assert "matcher/py.typed" in names
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert wheel.read(licence).decode().startswith("MIT License")
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_readme_documents_the_api_and_the_cpu_torch_install() -> None:
    readme = (REPO / "README.md").read_text()
    for text in ("import matcher", "matcher.__version__", "matcher.match(", "matcher.reconstruct(",
                 "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"):
        assert text in readme, text
