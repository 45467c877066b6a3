"""SDGMNet as a pipeline descriptor: LAF patches (kornia) -> network -> unit 128-D descriptors."""

from __future__ import annotations

import copy

import numpy as np
import torch

from matcher.descriptors.sdgmnet import SDGMNet
from matcher.descriptors.weights import load_sdgmnet
from matcher.detect import Keypoints
from matcher.patches import extract_patches, lafs_from_keypoints

__all__ = ["SDGMNetDescriptor", "describe_patches"]


def describe_patches(
    model: SDGMNet, patches: torch.Tensor, batch_size: int = 256, bf16: bool = False
) -> torch.Tensor:
    """Run the network in batches under ``torch.inference_mode``.

    Args:
        patches: (N, 1, 32, 32) float in [0, 1].
        bf16: run a bfloat16 copy of the network (weights and activations; descriptors are normalised in
            float32). 1.65x the float32 patches/s here (AVX512-BF16: 5,007 vs 3,034); bfloat16 autocast was not
            faster than float32 here (bench/descriptor_throughput.py).

    Returns:
        (N, 128) float32 descriptors with unit rows.
    """
    model.eval()
    dtype = torch.bfloat16 if bf16 else torch.float32
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    out = []
    with torch.inference_mode():
        for i in range(0, patches.shape[0], batch_size):
            batch = patches[i : i + batch_size].to(dtype).contiguous(memory_format=torch.channels_last)
            out.append(model(batch).float())
    if not out:
        return torch.zeros((0, model.descriptor_dim))
    return torch.nn.functional.normalize(torch.cat(out, 0), dim=1)


class SDGMNetDescriptor:
    """SDGMNet descriptors of keypoints.

    Args:
        weights: a ``.pt`` file or the name of a model shipped in ``models/``.
        magnification: patch half-width in keypoint sigmas; by default the one the model was trained with.
        batch_size: patches per forward pass.
        bf16: run the network in bfloat16 (see :func:`describe_patches`).
    """

    name = "sdgmnet"
    dim = 128

    def __init__(
        self, weights: str = "sdgmnet", magnification: float | None = None, batch_size: int = 256, bf16: bool = False
    ) -> None:
        self.model, self.meta = load_sdgmnet(weights)
        self.model = self.model.to(torch.bfloat16 if bf16 else torch.float32, memory_format=torch.channels_last)
        self.magnification = float(magnification or self.meta.get("magnification", 6.0))
        self.batch_size = batch_size
        self.bf16 = bf16

    def describe(self, gray: np.ndarray, keypoints: Keypoints) -> np.ndarray:
        """gray (h, w) uint8, N keypoints in its frame -> (N, 128) float32."""
        if len(keypoints) == 0:
            return np.zeros((0, self.dim), np.float32)
        patches = extract_patches(gray, lafs_from_keypoints(keypoints, self.magnification))
        return describe_patches(self.model, patches, self.batch_size, self.bf16).numpy().astype(np.float32)
