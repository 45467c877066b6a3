"""SDGMNet as a pipeline descriptor: LAF patches -> network (an inference engine) -> unit 128-D descriptors.

The engine decides the path (:mod:`matcher.descriptors.engines`): ``torch`` samples patches with kornia
(:mod:`matcher.patches`, the reference) and runs the network in torch; ``openvino`` samples them with the
torch-free copy of kornia's sampler (:mod:`matcher.patch_sampler`, pinned to kornia by a test) and runs the
network compiled from the weights file's cached IR, so such a run never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matcher.descriptors.engines import (
    Engine, OpenVINOEngine, TorchEngine, openvino_engine_of_file, resolve_engine,
)
from matcher.descriptors.weights import load_sdgmnet, resolve_weights
from matcher.detect import Keypoints
from matcher.errors import ConfigError
from matcher.patch_sampler import DEFAULT_MAGNIFICATION

if TYPE_CHECKING:
    import torch

    from matcher.descriptors.sdgmnet import SDGMNet

__all__ = ["SDGMNetDescriptor", "describe_patches"]

def describe_patches(
    model: SDGMNet, patches: torch.Tensor, batch_size: int = 256, bf16: bool = False
) -> torch.Tensor:
    """Run the network in torch (the reference engine) in batches under ``torch.inference_mode``.

    Args:
        patches: (N, 1, 32, 32) float in [0, 1].
        bf16: run a bfloat16 copy of the network (weights and activations; descriptors are normalised in
            float32); bfloat16 autocast is not used (speed: bench/descriptor_throughput.py, bench/RESULTS.md).

    Returns:
        (N, 128) float32 descriptors with unit rows.
    """
    return TorchEngine(model, "bf16" if bf16 else "fp32", batch_size, "cpu")(patches)


class SDGMNetDescriptor:
    """SDGMNet descriptors of keypoints.

    Args:
        weights: a ``.pt`` file or the name of a model shipped in ``models/``.
        magnification: patch half-width in keypoint sigmas; None or 0: the one the model was trained with.
        patch_size: side of the patches; None: the model's input size (another size is a ConfigError).
        batch_size: patches per forward pass.
        precision: ``auto`` | ``fp32`` | ``bf16`` (see :mod:`matcher.descriptors.engines`).
        engine: ``auto`` | ``torch`` | ``openvino``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (torch engine).
    """

    name = "sdgmnet"

    def __init__(
        self, weights: str = "sdgmnet", magnification: float | None = None, batch_size: int = 256,
        precision: str = "auto", engine: str = "auto", device: str = "auto", patch_size: int | None = None,
    ) -> None:
        chosen = resolve_engine(engine, device)
        fast = openvino_engine_of_file(resolve_weights(weights), precision, batch_size) if chosen == "openvino" else None
        self.engine: Engine | OpenVINOEngine
        if fast is not None:  # no torch on this path
            self.engine, self.meta, model_patch, self.dim = fast, fast.meta, fast.patch_size, fast.dim
        else:  # the reference (also the fallback when OpenVINO cannot build this network)
            model, self.meta = load_sdgmnet(weights)
            model_patch, self.dim = model.patch_size, model.descriptor_dim
            self.engine = TorchEngine(model, precision, batch_size, "cpu" if chosen == "openvino" else device)
        if patch_size is not None and patch_size != model_patch:
            raise ConfigError(f"patches.patch_size = {patch_size}: the model '{weights}' takes "
                              f"{model_patch}x{model_patch} patches")
        self.patch_size = model_patch
        self.magnification = float(magnification or self.meta.get("magnification", DEFAULT_MAGNIFICATION))

    @property
    def torch_free(self) -> bool:
        """Whether this descriptor runs without torch (the OpenVINO engine and the NumPy patch sampler)."""
        return isinstance(self.engine, OpenVINOEngine)

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray:
        """gray (h, w) uint8, N keypoints in its frame -> (N, dim) float32 (dim: the model's, 128)."""
        if len(keypoints) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.torch_free:
            from matcher.patch_sampler import extract_patches_np, lafs_from_keypoints_np

            lafs = lafs_from_keypoints_np(keypoints.xy, keypoints.scales, keypoints.orientations, self.magnification,
                                          keypoints.shapes)
            return self.engine(extract_patches_np(gray, lafs, self.patch_size)).astype(np.float32, copy=False)
        from matcher.patches import extract_patches, lafs_from_keypoints

        lafs = lafs_from_keypoints(keypoints, self.magnification)
        patches = extract_patches(gray, lafs, self.patch_size)
        return self.engine(patches).numpy().astype(np.float32, copy=False)
