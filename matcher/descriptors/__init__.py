"""Descriptors behind one interface: ``describe(gray (h, w) uint8, keypoints) -> (N, D) float32 unit rows``."""

from __future__ import annotations

from matcher.config import DescriptorConfig, PatchConfig
from matcher.descriptors.base import Descriptor
from matcher.descriptors.engines import build_engine, resolve_engine, resolve_precision
from matcher.descriptors.learned import SDGMNetDescriptor, describe_patches
from matcher.descriptors.rootsift import RootSIFT
from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import load_sdgmnet, resolve_weights, save_sdgmnet, shipped_models
from matcher.errors import ConfigError
from matcher.patches import DEFAULT_MAGNIFICATION

__all__ = [
    "DESCRIPTORS",
    "Descriptor",
    "RootSIFT",
    "SDGMNet",
    "SDGMNetDescriptor",
    "build_descriptor",
    "build_engine",
    "descriptor_settings",
    "describe_patches",
    "load_sdgmnet",
    "patch_magnification",
    "resolve_weights",
    "save_sdgmnet",
    "shipped_models",
]

DESCRIPTORS = ("rootsift", "sdgmnet")


def build_descriptor(config: DescriptorConfig, patches: PatchConfig | None = None) -> Descriptor:
    """Instantiate the descriptor a configuration names."""
    if config.name == "rootsift":
        return RootSIFT()
    if config.name == "sdgmnet":
        patches = patches or PatchConfig()  # magnification 0: the model's trained one, not a default of ours
        return SDGMNetDescriptor(config.weights, patches.magnification or None, config.batch_size,
                                 _precision(config), config.engine, config.device, patches.patch_size)
    raise ConfigError(f"unknown descriptor '{config.name}'; known: {', '.join(DESCRIPTORS)}")


def patch_magnification(descriptor: DescriptorConfig, patches: PatchConfig) -> float:
    """The magnification patches are sampled with under these settings: ``patches.magnification``, or where it is
    0 the one the sdgmnet model was trained with (its weights file's meta), else :data:`DEFAULT_MAGNIFICATION`.
    Training data cut from a match run uses it, so it holds the patches the run's descriptor saw."""
    if patches.magnification > 0:
        return float(patches.magnification)
    if descriptor.name == "sdgmnet":
        return float(load_sdgmnet(descriptor.weights)[1].get("magnification", DEFAULT_MAGNIFICATION))
    return DEFAULT_MAGNIFICATION


def _precision(config: DescriptorConfig) -> str:
    return "bf16" if config.bf16 else config.precision  # ``bf16 = true``: the older spelling of precision = "bf16"


def descriptor_settings(config: DescriptorConfig) -> dict[str, str]:
    """What ``auto`` resolves to on this machine (for cache fingerprints): precision and engine of sdgmnet."""
    if config.name != "sdgmnet":
        return {}
    return {"precision": resolve_precision(_precision(config)), "engine": resolve_engine(config.engine, config.device)}
