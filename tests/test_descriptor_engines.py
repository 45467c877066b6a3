"""SDGMNet inference engines: OpenVINO against the torch reference on real patches, fallback, the IR cache,
and a user's weights (``--model``) through the fast path.

Tolerances come from bench/descriptor_throughput.py on 4096 real entry-P10 patches (2026-12-01): OpenVINO f32
matches torch fp32 to cosine 1.00000; bfloat16 (torch or OpenVINO) gives cosine min 0.9983-0.9986, mean 0.9999.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matcher.config import DetectionConfig, load_config
from matcher.descriptors import load_sdgmnet, save_sdgmnet
from matcher.descriptors.engines import (
    OpenVINOEngine,
    TorchEngine,
    build_engine,
    resolve_engine,
    resolve_precision,
)
from matcher.descriptors.learned import SDGMNetDescriptor
from matcher.detect import detect_keypoints
from matcher.images import read_image, resize_for_detection
from matcher.matching import native_bf16
from matcher.patches import extract_patches, lafs_from_keypoints

from conftest import require_shared

openvino = pytest.importorskip("openvino", reason="the OpenVINO engine is the optional extra matcher[fast]")


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """300 real DoG patches of entry-P10 0003.jpg (800 px)."""
    folder = require_shared("scenes", "entry-P10", "images")
    gray, _, _ = resize_for_detection(read_image(folder, "0003.jpg").gray, 800)
    k = detect_keypoints(gray, DetectionConfig(max_keypoints=300))
    return extract_patches(gray, lafs_from_keypoints(k))


@pytest.fixture(scope="module", params=["sdgmnet", "sdgmnet-half"])
def model(request):
    """Each shipped network: the full SDGMNet and the compact one distilled from it (models/sdgmnet-half.md)."""
    return load_sdgmnet(request.param)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine_cache")


@pytest.fixture(scope="module")
def reference(model, patches) -> torch.Tensor:
    return TorchEngine(model, "fp32")(patches)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1)


def test_precision_auto_follows_the_processor() -> None:
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_engine("auto", "cpu") == "openvino"
    assert resolve_engine("torch") == "torch"


@pytest.mark.parametrize("precision, cos_min", [("fp32", 0.99999), ("bf16", 0.995)])
def test_openvino_agrees_with_torch(model, patches, reference, cache, precision, cos_min) -> None:
    engine = OpenVINOEngine(model, precision, batch_size=128, cache_root=cache)
    out = engine(patches)  # 300 patches: two full batches and a zero-padded one
    assert out.shape == (300, 128) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(300), atol=1e-5, rtol=0)
    cos = _cosine(out, reference)
    assert cos.min() >= cos_min and cos.mean() >= 0.9998
    torch.testing.assert_close(engine(patches), out, atol=0, rtol=0)  # deterministic, whatever request finishes first
    torch.testing.assert_close(engine(patches[:7]), out[:7], atol=1e-6, rtol=0)  # a lone padded batch


def test_torch_bf16_agrees_with_fp32(model, patches, reference) -> None:
    cos = _cosine(TorchEngine(model, "bf16")(patches), reference)
    assert cos.min() >= 0.995 and cos.mean() >= 0.9996  # measured: mean 0.99988 full, 0.99978 half


def test_cache_is_reused_invalidated_and_rebuilt(model, patches, reference, cache) -> None:
    first = OpenVINOEngine(model, "fp32", batch_size=128, cache_root=cache)
    again = OpenVINOEngine(model, "fp32", batch_size=128, cache_root=cache)
    assert again.cache_hit and again.cache_path == first.cache_path
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head[1].weight.mul_(-1.0)  # other weights: another cache entry
    flipped = OpenVINOEngine(other, "fp32", batch_size=128, cache_root=cache)
    assert not flipped.cache_hit and flipped.cache_path != first.cache_path
    assert _cosine(flipped(patches[:128]), reference[:128]).max() < 0  # it runs the other weights, not a stale IR
    bin_file = first.cache_path / "model.bin"
    bin_file.write_bytes(bin_file.read_bytes()[: bin_file.stat().st_size // 2])  # a half-written cache entry
    rebuilt = OpenVINOEngine(model, "fp32", batch_size=128, cache_root=cache)
    assert not rebuilt.cache_hit and rebuilt.cache_path == first.cache_path
    assert _cosine(rebuilt(patches), reference).min() >= 0.99999
    assert OpenVINOEngine(model, "fp32", batch_size=128, cache_root=cache).cache_hit


def test_falls_back_to_torch_when_openvino_fails(model, patches, reference, tmp_path, caplog) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("the cache root cannot be created here")
    engine = build_engine(model, "openvino", "fp32", 128, "cpu", cache_root=not_a_folder)
    assert engine.name == "torch" and "OpenVINO engine unavailable" in caplog.text
    torch.testing.assert_close(engine(patches), reference, atol=0, rtol=0)


def test_falls_back_to_torch_when_openvino_is_missing(model, patches, reference, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees without the extra
    assert resolve_engine("auto", "cpu") == "torch"
    assert build_engine(model, "auto", "fp32", 128, "cpu").name == "torch"
    engine = build_engine(model, "openvino", "fp32", 128, "cpu")
    assert engine.name == "torch" and "OpenVINO engine unavailable" in caplog.text
    torch.testing.assert_close(engine(patches), reference, atol=0, rtol=0)


def test_a_broken_openvino_is_recorded_as_torch_in_the_settings(model, patches, reference, monkeypatch) -> None:
    """The features' fingerprint (descriptor_settings) names the engine that runs, not the one configured."""
    from matcher.config import DescriptorConfig
    from matcher.descriptors import descriptor_settings
    from matcher.descriptors import engines

    class BrokenCore:
        @property
        def available_devices(self):
            raise RuntimeError("the CPU plugin failed to load")

    monkeypatch.setattr(engines, "_openvino_probe", {})
    monkeypatch.setattr(openvino, "Core", BrokenCore)
    assert descriptor_settings(DescriptorConfig(name="sdgmnet", engine="auto"))["engine"] == "torch"
    assert descriptor_settings(DescriptorConfig(name="sdgmnet", engine="openvino"))["engine"] == "torch"
    engine = build_engine(model, "auto", "fp32", 128, "cpu")
    assert engine.name == "torch"
    torch.testing.assert_close(engine(patches), reference, atol=0, rtol=0)
    monkeypatch.undo()
    assert descriptor_settings(DescriptorConfig(name="sdgmnet", engine="auto"))["engine"] == "openvino"


def test_user_weights_run_through_openvino(small_scene: Path, tmp_path: Path, monkeypatch) -> None:
    """``match --model my.pt``: the user's network is converted and cached, and describes like torch."""
    monkeypatch.setenv("MATCHER_CACHE_DIR", str(tmp_path / "cache"))
    net, meta = load_sdgmnet("sdgmnet")
    with torch.no_grad():
        net.features[0][0].weight.mul_(1.5)  # a "fine-tuned" network
    mine = tmp_path / "my.pt"
    save_sdgmnet(net, mine, meta)
    from click.testing import CliRunner

    from matcher.cli import match_command
    from matcher.storage import FeatureStore

    images = tmp_path / "two"
    images.mkdir()
    for name in ("0003.jpg", "0004.jpg"):
        (images / name).write_bytes((small_scene / name).read_bytes())
    db = tmp_path / "out" / "db.db"
    result = CliRunner().invoke(match_command, [str(images), "--out", str(db), "--model", str(mine), "-q",
                                                "--max-edge", "640", "--max-keypoints", "256",
                                                "--set", "descriptor.precision=fp32"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "cache" / "openvino").iterdir())  # the fast path converted the user's weights
    describer = SDGMNetDescriptor(str(mine), precision="fp32", engine="torch")
    with FeatureStore(db.with_name("db.features.h5"), "r") as store:
        for name in ("0003.jpg", "0004.jpg"):
            stored = store.read(name).descriptors
            gray, _, _ = resize_for_detection(read_image(images, name).gray, 640)
            k = detect_keypoints(gray, load_config("default", [{"detection": {"max_keypoints": 256}}]).detection)
            expected = describer.describe(gray, k)
            assert stored.shape == expected.shape
            assert np.einsum("ij,ij->i", stored, expected).min() >= 0.99999


def test_engines_are_built_used_and_destroyed_repeatedly_without_hanging(tmp_path: Path) -> None:
    """Destroying a compiled model must not wait on a worker thread that waits for the GIL (it did with
    AsyncInferQueue's Python callbacks: 2 of 3 runs of 25 cycles hung here, one after the first cycle)."""
    import subprocess

    script = tmp_path / "cycles.py"
    script.write_text(
        "import gc, torch\nfrom pathlib import Path\n"
        "from matcher.descriptors import load_sdgmnet\n"
        "from matcher.descriptors.engines import OpenVINOEngine\n"
        "model = load_sdgmnet('sdgmnet')[0]\n"
        "x = torch.rand(600, 1, 32, 32)\n"
        "for _ in range(8):\n"
        f"    engine = OpenVINOEngine(model, 'fp32', 256, cache_root=Path({str(tmp_path)!r}), threads=2)\n"
        "    assert engine(x).shape == (600, 128)\n"
        "    del engine\n"
        "    gc.collect()\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
