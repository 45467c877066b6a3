"""Patch descriptors to compare SDGMNet with, on the same 32×32 patches: RootSIFT and TFeat.

* ``rootsift``: kornia's ``SIFTDescriptor`` (4×4×8 histograms, RootSIFT normalisation) on the patch, the
  classical baseline computed on exactly the input the network gets.
* ``tfeat:<path>``: TFeat (Balntas et al., BMVC 2016) with weights trained by its authors on UBC PhotoTour
  (``../shared/data/weights/tfeat/tfeat-*.params``; kornia's ``TFeat`` architecture). Comparators only:
  they are not ours to ship.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import kornia.feature as KF

from matcher.errors import ModelWeightsError

__all__ = ["describe_with_baseline"]


def _batched(module: torch.nn.Module, patches: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    module.eval()
    with torch.inference_mode():
        out = [module(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)]
    return F.normalize(torch.cat(out).flatten(1).float(), dim=1)


def describe_with_baseline(name: str, patches: torch.Tensor) -> torch.Tensor:
    """Describe (N, 1, 32, 32) patches in [0, 1] with ``rootsift`` or ``tfeat:<weights file>``; (N, 128) unit rows."""
    if name == "rootsift":
        return _batched(KF.SIFTDescriptor(patch_size=patches.shape[-1], rootsift=True), patches)
    if name.startswith("tfeat:"):
        model = KF.TFeat(pretrained=False)
        path = Path(name.split(":", 1)[1])
        try:  # tensors and plain data only: a weights file that needs arbitrary pickled objects is refused
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ModelWeightsError(f"{path}: not a plain TFeat weights file ({reason})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # a training checkpoint ({"epoch", "state_dict"}, e.g. HardTFeat.pth)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelWeightsError(f"{path}: weights do not fit TFeat ({str(exc).splitlines()[0][:160]})") from None
        return _batched(model, patches)
    raise ValueError(f"unknown baseline descriptor '{name}' (rootsift, tfeat:<path>)")
