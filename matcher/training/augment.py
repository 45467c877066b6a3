"""Patch augmentation of the SDGMNet recipe (shared/docs/methods.md §1.1), adapted to 32×32 patches.

* The K views of one identity share a random rot90 (0/90/180/270°) and a random flip (none/horizontal/
  vertical): the network sees every orientation, and the pair stays a match.
* Each patch then gets its own small random similarity: a rotation of ±``max_rotation_deg`` and a zoom that
  keeps ``scale_range`` of the patch with an aspect ratio in ``aspect_range`` (the recipe's RandomResizedCrop
  of 90-100% from 64×64 patches, here sampled from the 32×32 patch with reflection at the border).

Deterministic: every draw comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch"]


def augment_batch(
    patches: torch.Tensor,
    views_per_identity: int,
    generator: torch.Generator,
    max_rotation_deg: float = 5.0,
    scale_range: tuple[float, float] = (0.9, 1.0),
    aspect_range: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Augment an identity-major batch.

    Args:
        patches: (B, 1, 32, 32) float, the K views of each identity consecutive (B = P·K).
        views_per_identity: K.
        generator: source of randomness.

    Returns:
        (B, 1, 32, 32) float32 augmented patches.
    """
    b = patches.shape[0]
    k = views_per_identity
    p = b // k
    rot = torch.randint(0, 4, (p,), generator=generator).repeat_interleave(k)
    flip = torch.randint(0, 3, (p,), generator=generator).repeat_interleave(k)
    out = patches.clone()
    for r in range(1, 4):
        sel = rot == r
        if sel.any():
            out[sel] = torch.rot90(out[sel], r, dims=(2, 3))
    h = flip == 1
    v = flip == 2
    if h.any():
        out[h] = torch.flip(out[h], dims=(3,))
    if v.any():
        out[v] = torch.flip(out[v], dims=(2,))

    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_rotation_deg)
    area = scale_range[0] + torch.rand(b, generator=generator) * (scale_range[1] - scale_range[0])
    log_aspect = math.log(aspect_range[0]) + torch.rand(b, generator=generator) * (
        math.log(aspect_range[1]) - math.log(aspect_range[0])
    )
    aspect = torch.exp(log_aspect)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    # Crop centre: anywhere the crop stays inside the patch.
    tx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    return F.grid_sample(out.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
