"""Descriptors behind one interface: ``describe(gray (h, w) uint8, keypoints) -> (N, D) float32 unit rows``.

Importing this package does not import torch: ``SDGMNet`` (the torch module) is loaded when first named, and
the torch engine, kornia and the weights loader when a run needs them (:mod:`matcher.descriptors.learned`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matcher.config import DescriptorConfig, PatchConfig
from matcher.descriptors.base import Descriptor, describe_orientations
from matcher.descriptors.engines import (
    build_engine, has_cached_ir_of_file, resolve_engine, resolve_precision, resolved_engine,
)
from matcher.descriptors.learned import SDGMNetDescriptor, describe_patches
from matcher.descriptors.rootsift import RootSIFT
from matcher.descriptors.weights import load_sdgmnet, resolve_weights, save_sdgmnet, shipped_models
from matcher.errors import ConfigError
from matcher.patch_sampler import DEFAULT_MAGNIFICATION

if TYPE_CHECKING:
    from matcher.descriptors.sdgmnet import SDGMNet


def __getattr__(name: str) -> Any:  # SDGMNet imports torch: only when asked for
    if name == "SDGMNet":
        from matcher.descriptors.sdgmnet import SDGMNet

        return SDGMNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DESCRIPTORS",
    "Descriptor",
    "RootSIFT",
    "SDGMNet",
    "SDGMNetDescriptor",
    "build_descriptor",
    "build_engine",
    "check_weights",
    "descriptor_settings",
    "describe_orientations",
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


def check_weights(config: DescriptorConfig) -> None:
    """Raise ModelWeightsError for sdgmnet weights that cannot be used (missing, not a weights file, wrong shapes,
    NaN), before a run writes anything. Without torch when the OpenVINO engine will run and its cache holds an
    entry converted from this very file (checked by :func:`load_sdgmnet` when the entry was written)."""
    if config.name != "sdgmnet":
        return
    path = resolve_weights(config.weights)
    if resolve_engine(config.engine, config.device) == "openvino" and has_cached_ir_of_file(path, config.batch_size):
        return
    load_sdgmnet(config.weights)


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
    """What ``auto`` resolves to on this machine (for cache fingerprints): precision and engine of sdgmnet; the
    engine is the one that runs (OpenVINO only when it builds this weights file's network, which is then kept
    for the run: :func:`matcher.descriptors.engines.openvino_engine_of_file`)."""
    if config.name != "sdgmnet":
        return {}
    return {"precision": resolve_precision(_precision(config)),
            "engine": resolved_engine(config.engine, config.device, resolve_weights(config.weights), _precision(config),
                                      config.batch_size)}
