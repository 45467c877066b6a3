"""Facts with one home: the model's own patch settings, shipped-file resolution, COLMAP's log level."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matcher.colmap_log import quiet_colmap
from matcher.config import DescriptorConfig, PatchConfig, load_config, preset_path
from matcher.descriptors import SDGMNet, build_descriptor, patch_magnification, resolve_weights, save_sdgmnet
from matcher.errors import ConfigError, ModelWeightsError


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "m.pt"
    save_sdgmnet(SDGMNet(), path, {"magnification": 4.5})
    return path


def test_the_descriptor_samples_with_the_models_magnification_unless_configured(weights: Path) -> None:
    config = DescriptorConfig(weights=str(weights), engine="torch")
    assert load_config("default").patches.magnification == 0.0  # the shipped presets defer to the model
    assert build_descriptor(config, PatchConfig()).magnification == 4.5
    assert build_descriptor(config, PatchConfig(magnification=7.0)).magnification == 7.0
    assert patch_magnification(config, PatchConfig()) == 4.5  # training data cut from a run: the same patches
    assert patch_magnification(DescriptorConfig(name="rootsift"), PatchConfig()) == 6.0
    described = build_descriptor(config, PatchConfig())
    assert (described.patch_size, described.dim) == (SDGMNet.patch_size, SDGMNet.descriptor_dim)


def test_a_patch_size_the_model_does_not_take_is_a_config_error(weights: Path) -> None:
    with pytest.raises(ConfigError, match="patches.patch_size = 24: the model .* takes 32x32 patches"):
        build_descriptor(DescriptorConfig(weights=str(weights), engine="torch"), PatchConfig(patch_size=24))


def test_shipped_files_resolve_the_same_way(tmp_path: Path) -> None:
    assert preset_path("default").name == "default.toml" and resolve_weights("sdgmnet").name == "sdgmnet.pt"
    with pytest.raises(ConfigError, match="unknown pipeline preset 'nope' \\(shipped: .*default"):
        preset_path("nope")
    with pytest.raises(ModelWeightsError, match="unknown model 'nope' \\(shipped: .*sdgmnet"):
        resolve_weights("nope")
    with pytest.raises(ModelWeightsError, match="weights file not found"):
        resolve_weights(str(tmp_path / "missing.pt"))


def test_quiet_colmap_restores_the_log_level_after_an_error() -> None:
    import pycolmap

    before = pycolmap.logging.minloglevel
    with pytest.raises(RuntimeError), quiet_colmap():
        assert pycolmap.logging.minloglevel >= 2
        raise RuntimeError("inside")
    assert pycolmap.logging.minloglevel == before
