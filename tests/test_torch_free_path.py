"""The inference path without torch (descriptor engine ``openvino``): kornia's sampler copied in NumPy/OpenCV,
the OpenVINO engine built from a weights file's cached IR, float32 matching by OpenCV; against the torch path on
real images, a ``match`` that never imports torch, and the same database however warm the cache is.

Tolerances from measurements on entry-P10 0003/0004 (800 px, 3,699 / 3,384 DoG keypoints, 2026-12-01):
patches within 7.7e-5 of kornia (1600 px: 7.7e-5; 800 px: 5.3e-5); OpenVINO fp32 descriptors on those patches
against torch fp32 on kornia's, cosine min 1.000000; numpy matching against torch fp32 and bf16, 1,216 of 1,216
matches identical (RootSIFT: 1,140 of 1,140).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from matcher.config import DescriptorConfig, DetectionConfig, MatchingConfig
from matcher.descriptors import descriptor_settings
from matcher.descriptors.learned import SDGMNetDescriptor
from matcher.descriptors.rootsift import RootSIFT
from matcher.detect import detect_keypoints
from matcher.errors import ConfigError
from matcher.images import read_image, resize_for_detection
from matcher.matching import NUMPY_MAX_PAIRS, mutual_nearest_neighbours, native_bf16, resolve_matching_engine
from matcher.patch_sampler import extract_patches_np, lafs_from_keypoints_np
from matcher.patches import extract_patches, lafs_from_keypoints

from conftest import require_shared

openvino = pytest.importorskip("openvino", reason="the OpenVINO engine is the optional extra matcher[fast]")


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """This module's own OpenVINO cache (the first engine built converts the weights into it)."""
    from matcher.descriptors import engines

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCHER_CACHE_DIR", str(tmp_path_factory.mktemp("engine_cache")))
        patch.setattr(engines, "_file_engines", {})
        yield


@pytest.fixture(scope="module")
def views() -> dict:
    """entry-P10 0003 and 0004 at 640 px with 800 DoG keypoints each: {name: (gray, keypoints)}."""
    folder = require_shared("scenes", "entry-P10", "images")
    out = {}
    for name in ("0003.jpg", "0004.jpg"):
        gray, _, _ = resize_for_detection(read_image(folder, name).gray, 640)
        out[name] = (gray, detect_keypoints(gray, DetectionConfig(max_keypoints=800)))
    return out


def test_patch_sampler_reproduces_kornia(views) -> None:
    gray, k = views["0003.jpg"]
    lafs = lafs_from_keypoints_np(k.xy, k.scales, k.orientations, 6.0)
    reference_lafs = lafs_from_keypoints(k, 6.0)[0].numpy()
    np.testing.assert_allclose(lafs, reference_lafs, rtol=1e-5, atol=1e-4)
    # plus frames that reach the coarsest levels, cross the border, are sheared, or hold a NaN (zero patch)
    extra = np.array([[[90.0, 10.0, 320.0], [-5.0, 80.0, 200.0]], [[12.0, 0.0, 1.0], [0.0, 12.0, 2.0]],
                      [[300.0, 0.0, 600.0], [0.0, 300.0, 420.0]], [[np.nan, 0.0, 5.0], [0.0, 4.0, 5.0]]], np.float32)
    lafs = np.concatenate([lafs, extra])
    ours = extract_patches_np(gray, lafs)
    theirs = extract_patches(gray, torch.from_numpy(lafs)[None]).numpy()
    assert ours.shape == theirs.shape == (len(lafs), 1, 32, 32)
    assert np.abs(ours - theirs).max() <= 2e-4
    assert not ours[-1].any()


def test_openvino_path_describes_like_torch(views) -> None:
    fast = SDGMNetDescriptor("sdgmnet", precision="fp32", engine="openvino")
    reference = SDGMNetDescriptor("sdgmnet", precision="fp32", engine="torch")
    assert fast.torch_free and not reference.torch_free
    from matcher.descriptors import SDGMNet, engines

    assert (engines.PATCH_SIZE, engines.DESCRIPTOR_DIM) == (SDGMNet.patch_size, SDGMNet.descriptor_dim)
    assert fast.magnification == reference.magnification == 6.0  # the model's, from the cache entry's manifest
    for gray, k in views.values():
        cosine = np.einsum("ij,ij->i", fast.describe(gray, k), reference.describe(gray, k))
        assert cosine.min() >= 0.9999


@pytest.mark.parametrize("describer", ["rootsift", "sdgmnet"])
def test_numpy_matching_equals_torch_matching(views, describer) -> None:
    make = RootSIFT() if describer == "rootsift" else SDGMNetDescriptor("sdgmnet", precision="fp32", engine="openvino")
    d1, d2 = (make.describe(*views[n]) for n in ("0003.jpg", "0004.jpg"))
    ours, our_scores = mutual_nearest_neighbours(d1, d2, MatchingConfig(engine="numpy"))
    assert len(ours) > 100
    for precision in ("fp32", "bf16"):
        theirs, scores = mutual_nearest_neighbours(d1, d2, MatchingConfig(engine="torch", precision=precision))
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(our_scores, scores, atol=1e-5)
    again, _ = mutual_nearest_neighbours(d1, d2, MatchingConfig(engine="numpy", block_size=97))
    np.testing.assert_array_equal(ours, again)


def test_matching_engine_follows_the_descriptor_engine_and_the_run_size() -> None:
    assert resolve_matching_engine("auto", "auto", "openvino", 1) == "numpy"
    assert resolve_matching_engine("auto", "auto", "openvino", NUMPY_MAX_PAIRS) == "numpy"
    assert resolve_matching_engine("auto", "auto", "openvino", NUMPY_MAX_PAIRS + 1) == "torch"  # bf16 pays
    assert resolve_matching_engine("auto", "auto", "openvino", None) == "torch"
    assert resolve_matching_engine("auto", "auto", "torch", 1) == "torch"
    assert resolve_matching_engine("auto", "auto", None, 1) == "torch"  # rootsift
    assert resolve_matching_engine("auto", "bf16", "openvino", 1) == "torch"
    assert resolve_matching_engine("numpy", "fp32", "torch", 1000) == "numpy"
    with pytest.raises(ConfigError):
        resolve_matching_engine("numpy", "bf16", "openvino")


def test_bf16_probe_needs_no_torch() -> None:
    assert native_bf16() == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_openvino_failing_to_compile_is_recorded_as_torch(views, monkeypatch) -> None:
    """OpenVINO imports and has a CPU, but cannot compile the network: the features record the engine that ran."""
    from matcher.descriptors import engines

    class CompileFails(openvino.Core):
        def compile_model(self, *args, **kwargs):
            raise RuntimeError("compilation failed (forced)")

    monkeypatch.setattr(openvino, "Core", CompileFails)
    monkeypatch.setattr(engines, "_file_engines", {})
    config = DescriptorConfig(name="sdgmnet", precision="fp32")
    assert engines.resolve_engine("auto", "cpu") == "openvino"  # OpenVINO itself is usable
    assert descriptor_settings(config)["engine"] == "torch"
    describer = SDGMNetDescriptor("sdgmnet", precision="fp32")
    assert describer.engine.name == "torch" and not describer.torch_free
    gray, k = views["0004.jpg"]
    reference = SDGMNetDescriptor("sdgmnet", precision="fp32", engine="torch").describe(gray, k)
    np.testing.assert_array_equal(describer.describe(gray, k), reference)
    monkeypatch.undo()
    monkeypatch.setattr(engines, "_file_engines", {})
    assert descriptor_settings(config)["engine"] == "openvino"


_RUN = """
import json, sys
from matcher.cli import match_command
try:
    match_command(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps({"torch": "torch" in sys.modules, "kornia": "kornia" in sys.modules}))
"""


def _run_match(images: Path, db: Path, cache: Path) -> dict:
    env = dict(os.environ, MATCHER_CACHE_DIR=str(cache), OMP_NUM_THREADS="2")
    args = [sys.executable, "-c", _RUN, str(images), "--out", str(db), "-q", "--max-edge", "400",
            "--max-keypoints", "300"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _database(path: Path) -> dict:
    with pycolmap.Database.open(path) as db:
        images = sorted(db.read_all_images(), key=lambda image: image.name)
        out = {image.name: (db.read_keypoints(image.image_id), db.read_descriptors(image.image_id).data)
               for image in images}
        a, b = images[0].image_id, images[1].image_id
        out["matches"] = db.read_matches(a, b)
        out["inliers"] = db.read_two_view_geometry(a, b).inlier_matches
    return out


def test_match_on_the_openvino_path_never_imports_torch(small_scene: Path, tmp_path: Path) -> None:
    """A cold cache converts through torch once; the warm run imports neither torch nor kornia; both runs write
    the same database: the path follows the configuration, not the cache."""
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in small_scene.iterdir())[:2]:
        (images / name).write_bytes((small_scene / name).read_bytes())
    cache = tmp_path / "cache"
    cold = _run_match(images, tmp_path / "cold" / "db.db", cache)
    assert cold["torch"]  # the first run on a machine loads the weights with torch to convert them
    warm = _run_match(images, tmp_path / "warm" / "db.db", cache)
    assert warm == {"torch": False, "kornia": False}
    first, second = (_database(tmp_path / d / "db.db") for d in ("cold", "warm"))
    assert len(first["inliers"]) > 15
    assert first.keys() == second.keys()
    for key in first:
        for x, y in zip(first[key] if isinstance(first[key], tuple) else [first[key]],
                        second[key] if isinstance(second[key], tuple) else [second[key]]):
            np.testing.assert_array_equal(x, y)
    import h5py

    for run in ("cold", "warm"):
        with h5py.File(tmp_path / run / "db.matches.h5", "r") as matches:
            recorded = json.loads(matches.attrs["fingerprint"])
        assert recorded["descriptor"]["engine"] == "openvino" and recorded["matching"]["engine"] == "numpy"
