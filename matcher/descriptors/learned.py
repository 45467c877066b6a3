"""SDGMNet as a pipeline descriptor: LAF patches (kornia) -> network (an inference engine) -> unit 128-D descriptors."""

from __future__ import annotations

import numpy as np
import torch

from matcher.descriptors.engines import TorchEngine, build_engine
from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import load_sdgmnet
from matcher.detect import Keypoints
from matcher.errors import ConfigError
from matcher.patches import DEFAULT_MAGNIFICATION, extract_patches, lafs_from_keypoints

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
        model, self.meta = load_sdgmnet(weights)
        if patch_size is not None and patch_size != model.patch_size:
            raise ConfigError(f"patches.patch_size = {patch_size}: the model '{weights}' takes "
                              f"{model.patch_size}x{model.patch_size} patches")
        self.patch_size, self.dim = model.patch_size, model.descriptor_dim
        self.magnification = float(magnification or self.meta.get("magnification", DEFAULT_MAGNIFICATION))
        self.engine = build_engine(model, engine, precision, batch_size, device)

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray:
        """gray (h, w) uint8, N keypoints in its frame -> (N, dim) float32 (dim: the model's, 128)."""
        if len(keypoints) == 0:
            return np.zeros((0, self.dim), np.float32)
        lafs = lafs_from_keypoints(keypoints, self.magnification)
        patches = extract_patches(gray, lafs, self.patch_size)
        return self.engine(patches).numpy().astype(np.float32, copy=False)
