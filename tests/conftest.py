"""Shared fixtures: the real photos of ../shared/data and small scenes built from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from matcher.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``$MATCHER_SHARED_DATA`` or ``../shared/data`` beside the repository (:mod:`matcher.shared_data`)."""
    return shared_data_dir()


def require_shared(*parts: str) -> Path:
    path = shared_data().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set MATCHER_SHARED_DATA)")
    return path


def run_scene_tests() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("MATCHER_SCENE_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if run_scene_tests():
        return
    skip = pytest.mark.skip(reason="full-scene runs take minutes: they run where CI=true (or MATCHER_SCENE_TESTS=1)")
    for item in items:
        if "scene" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (and stalls on a busy machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def entry_p10() -> Path:
    """The 10 images of Strecha's entry-P10 (1600x1067), with K.txt beside them."""
    return require_shared("scenes", "entry-P10", "images")


#: four consecutive entry-P10 photos: a fast scene that reconstructs
SMALL_SCENE_NAMES = ("0002.jpg", "0003.jpg", "0004.jpg", "0005.jpg")


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory, entry_p10: Path) -> Path:
    """Four consecutive real entry-P10 photos in a temporary folder (a fast, reconstructable scene)."""
    folder = tmp_path_factory.mktemp("small_scene")
    for name in SMALL_SCENE_NAMES:
        shutil.copy(entry_p10 / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, entry_p10: Path) -> Path:
    """The :data:`SMALL_SCENE_NAMES` photos at 400x267, in a folder of this test module's own."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny")
    for name in SMALL_SCENE_NAMES:
        with Image.open(entry_p10 / name) as img:
            img.resize((400, 267), Image.LANCZOS).save(folder / name, quality=92)
    return folder


@pytest.fixture(autouse=True)
def _restore_matcher_logger():
    """CLI tests run in this process, and the CLI sets up the ``matcher`` logger (its own handler, no propagation
    to the root logger): restore it after each test so a later test's ``caplog`` still sees the warnings."""
    import logging

    logger = logging.getLogger("matcher")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
