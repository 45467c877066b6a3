"""Descriptor weights files: find, load and save SDGMNet weights.

A weights file is ``torch.save`` of a dict ``{"format": "matcher.sdgmnet/1", "state_dict": ..., "meta": {...}}``,
loaded with ``weights_only=True``. ``meta`` holds what a model card needs (training data, loss, steps, seed,
and the patch magnification the model was trained with). The network's variant (its channels, e.g. the compact
``half``) is read from the tensor shapes of ``state_dict``; :func:`save_sdgmnet` also writes it to
``meta["channels"]`` for people reading the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from matcher.errors import ModelWeightsError
from matcher.shipped import resolve_shipped, shipped_names

if TYPE_CHECKING:
    from matcher.descriptors.sdgmnet import SDGMNet

__all__ = ["FORMAT", "shipped_models", "resolve_weights", "load_sdgmnet", "save_sdgmnet"]

FORMAT = "matcher.sdgmnet/1"


def shipped_models() -> list[str]:
    """Names of the weights shipped in ``models/`` (without ``.pt``)."""
    return shipped_names("matcher._models", ".pt")


def resolve_weights(name_or_path: str) -> Path:
    """A path to a ``.pt`` file, or the name of a shipped model (``sdgmnet`` -> ``models/sdgmnet.pt``)."""
    return resolve_shipped(name_or_path, "matcher._models", ".pt", ("model", "weights"), ModelWeightsError)


def load_sdgmnet(name_or_path: str) -> tuple[SDGMNet, dict[str, Any]]:
    """Load an SDGMNet in eval mode and its metadata."""
    import torch

    from matcher.descriptors.sdgmnet import SDGMNet, channels_of_state_dict

    path = resolve_weights(name_or_path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelWeightsError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelWeightsError(f"{path}: not a matcher SDGMNet weights file (expected format {FORMAT})")
    state, meta = blob.get("state_dict"), blob.get("meta", {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelWeightsError(f"{path}: 'state_dict' is not a dict of tensors")
    if not isinstance(meta, dict):
        raise ModelWeightsError(f"{path}: 'meta' is not a dict (got {type(meta).__name__})")
    try:
        model = SDGMNet(init_weights=False, channels=channels_of_state_dict(state))  # parameters loaded below
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise ModelWeightsError(f"{path}: weights do not fit SDGMNet ({str(exc).splitlines()[0]})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelWeightsError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:3])})")
    return model.eval(), dict(meta)


def save_sdgmnet(model: SDGMNet, path: Path, meta: dict[str, Any]) -> None:
    """Write weights (fp32 state dict) and metadata atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    meta = {**meta, "channels": list(model.channels), "variant": model.variant}
    torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)
