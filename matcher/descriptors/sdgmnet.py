"""SDGMNet: the HyNet-style L2-Net backbone used by SDGMNet (Ma & Deng, arXiv 2106.04434).

Architecture (shared/docs/methods.md §1.2, following the released code): an input FRN+TLU, six 3×3 conv
blocks with FRN+TLU (32, 32, 64/s2, 64, 128/s2, 128 channels), dropout 0.3, an 8×8 conv to 128 channels,
BatchNorm without affine parameters, and L2 normalisation.

Variants (:data:`VARIANTS`): ``full`` is that network (78 MFLOP per patch); ``half`` has half the channels in every
block (16, 16, 32/s2, 32, 64/s2, 64; 20 MFLOP per patch) and the same 128-D output, trained by distillation from
``full`` (:mod:`matcher.training.distill`). A weights file's tensor shapes identify its variant
(:func:`channels_of_state_dict`), so loading needs no extra setting.

Input: patches ``(B, 1, 32, 32)`` float in [0, 1]. Output: descriptors ``(B, 128)`` with unit rows.

Without autograd (``torch.inference_mode`` / ``no_grad``) each FRN+TLU pair runs as one in-place pass
(:func:`frn_tlu_`): the same function, about twice the patches/s on this CPU, where the separate element-wise
ops took 64 % of the forward pass (bench/descriptor_throughput.py).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["FRN", "TLU", "SDGMNet", "VARIANTS", "channels_of_state_dict", "frn_tlu_"]

PATCH_SIZE = 32
DESCRIPTOR_DIM = 128
STRIDES = (1, 1, 2, 1, 2, 1)
#: channels of the six 3×3 blocks per named variant
VARIANTS: dict[str, tuple[int, ...]] = {
    "full": (32, 32, 64, 64, 128, 128),
    "half": (16, 16, 32, 32, 64, 64),
}


class FRN(nn.Module):
    """Filter Response Normalisation: ``x * rsqrt(mean_hw(x²) + eps) * gamma + beta``.

    ``eps`` is a fixed constant (1e-6), as in the released SDGMNet code.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
        return x * torch.rsqrt(nu2 + self.eps) * self.gamma + self.beta


class TLU(nn.Module):
    """Thresholded Linear Unit: ``max(x, tau)`` with a learnable per-channel ``tau`` (initialised to -1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.tau = nn.Parameter(-torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return torch.max(x, self.tau)


def frn_tlu_(x: torch.Tensor, frn: FRN, tlu: TLU) -> torch.Tensor:
    """``tlu(frn(x))`` computed in place on x (B, C, H, W); only for tensors autograd does not track."""
    # mean of x² over H, W without a full-size temporary (allocating one per layer cost a quarter of the pass)
    nu2 = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).square_().div_(x.shape[2] * x.shape[3])  # (B, C, 1, 1)
    scale = torch.rsqrt(nu2.add_(frn.eps)).mul_(frn.gamma)
    x.mul_(scale).add_(frn.beta)
    return torch.maximum(x, tlu.tau.to(x.dtype), out=x)


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=True),
        FRN(cout),
        TLU(cout),
    )


class SDGMNet(nn.Module):
    """The SDGMNet patch descriptor network.

    Args:
        drop_rate: dropout probability before the final 8×8 convolution (0.3 in the paper's recipe).
        channels: output channels of the six 3×3 blocks, or a name in :data:`VARIANTS` (default ``full``).
        init_weights: initialise the convolutions (orthogonal); False when trained weights are loaded next
            (the 14 QR decompositions took 1.4-2.9 s of a 2-image ``match`` run).

    Shape:
        - Input: :math:`(B, 1, 32, 32)`, grey patches scaled to [0, 1].
        - Output: :math:`(B, 128)`, L2-normalised rows.
    """

    patch_size = PATCH_SIZE
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, drop_rate: float = 0.3, init_weights: bool = True,
                 channels: str | tuple[int, ...] = "full") -> None:
        super().__init__()
        if isinstance(channels, str):
            if channels not in VARIANTS:
                raise ValueError(f"unknown SDGMNet variant {channels!r}; known: {', '.join(VARIANTS)}")
            channels = VARIANTS[channels]
        if len(channels) != len(STRIDES) or min(channels) < 1:
            raise ValueError(f"SDGMNet needs {len(STRIDES)} positive channel counts, got {channels}")
        self.channels = tuple(int(c) for c in channels)
        cins = (1, *self.channels[:-1])
        self.input_norm = nn.Sequential(FRN(1), TLU(1))
        self.features = nn.Sequential(
            *(_conv_block(cin, cout, stride) for cin, cout, stride in zip(cins, self.channels, STRIDES))
        )
        self.head = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Conv2d(self.channels[-1], DESCRIPTOR_DIM, kernel_size=8, bias=False),
            nn.BatchNorm2d(DESCRIPTOR_DIM, affine=False),
        )
        if init_weights:
            self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight, gain=0.6)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.01)

    @property
    def variant(self) -> str:
        """The name of this network's channels in :data:`VARIANTS`, else ``custom``."""
        return next((name for name, c in VARIANTS.items() if c == self.channels), "custom")

    def flops_per_patch(self) -> int:
        """Multiply-adds × 2 of the convolutions for one 32×32 patch (the FRN/TLU passes not counted)."""
        total, size = 0, PATCH_SIZE
        for cin, cout, stride in zip((1, *self.channels[:-1]), self.channels, STRIDES):
            size //= stride
            total += 2 * 9 * cin * cout * size * size
        return total + 2 * self.channels[-1] * DESCRIPTOR_DIM * size * size

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: (B, 1, 32, 32) -> descriptors (B, 128), unit rows."""
        if patches.ndim != 4 or patches.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"SDGMNet expects patches of shape (B, 1, 32, 32), got {tuple(patches.shape)}")
        if torch.is_grad_enabled():
            x = self.features(self.input_norm(patches))
        else:
            x = frn_tlu_(patches.clone(), *self.input_norm)
            for conv, frn, tlu in self.features:
                x = frn_tlu_(conv(x), frn, tlu)
        x = self.head(x).flatten(1)
        return F.normalize(x.float(), p=2.0, dim=1)


def channels_of_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The six block widths of an SDGMNet state dict (from its convolution weights' shapes)."""
    try:
        return tuple(int(state[f"features.{i}.0.weight"].shape[0]) for i in range(len(STRIDES)))
    except (KeyError, AttributeError, IndexError) as exc:
        raise ValueError(f"not an SDGMNet state dict (missing {exc})") from None
