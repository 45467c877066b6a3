"""Descriptor-learning losses: ``loss(descriptors (B, D) unit rows, labels (B,)) -> scalar``.

One module per loss (shared/docs/methods.md): :class:`HardNetLoss` (baseline), :class:`SDGMLoss`,
:class:`SmartMiningLoss`, :class:`DGCRLLoss` (with :class:`NormalizeScale`) and :class:`DDTASLoss`. Shared pieces
(the contract, pair masks, in-batch hardest negatives) are in :mod:`matcher.losses.base`. Miners and other
training hooks (Smart Mining's global mining, DDTAS's online threshold generator) are apart, in
:mod:`matcher.training` (:mod:`~matcher.training.miners`, :mod:`~matcher.training.otg`).

Example:
    >>> import torch
    >>> loss = get_loss("hardnet", margin=1.0)
    >>> x = torch.nn.functional.normalize(torch.randn(8, 128), dim=1)
    >>> float(loss(x, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))) >= 0
    True
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

from matcher.losses.base import DescriptorLoss, hardest_negatives, pair_indices, same_label_mask
from matcher.losses.ddtas import DDTASLoss
from matcher.losses.dgcrl import DGCRLLoss, NormalizeScale, gram_schmidt
from matcher.losses.hardnet import HardNetLoss
from matcher.losses.sdgm import SDGMLoss
from matcher.losses.smart_mining import SmartMiningLoss

__all__ = [
    "DDTASLoss",
    "DGCRLLoss",
    "DescriptorLoss",
    "HardNetLoss",
    "LOSSES",
    "LossName",
    "NormalizeScale",
    "SDGMLoss",
    "SmartMiningLoss",
    "check_loss_options",
    "get_loss",
    "gram_schmidt",
    "hardest_negatives",
    "pair_indices",
    "same_label_mask",
]

#: the loss names a configuration may give (a typed choice, checked when a training config is loaded).
LossName = Literal["ddtas", "dgcrl", "hardnet", "sdgm", "smart_mining"]

#: registry name -> loss class (the keys are exactly :data:`LossName`).
LOSSES: dict[str, type[DescriptorLoss]] = {
    "ddtas": DDTASLoss,
    "dgcrl": DGCRLLoss,
    "hardnet": HardNetLoss,
    "sdgm": SDGMLoss,
    "smart_mining": SmartMiningLoss,
}


def get_loss(name: str, **kwargs: Any) -> DescriptorLoss:
    """Build a loss by name ("hardnet", "sdgm", "smart_mining", "dgcrl", "ddtas"); ``kwargs`` go to its constructor.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[key](**kwargs)


assert sorted(LOSSES) == sorted(get_args(LossName))


def check_loss_options(name: str, options: dict[str, Any]) -> None:
    """Raise a one-line ConfigError if ``options`` are not keyword arguments of the loss ``name``."""
    from matcher.errors import ConfigError

    try:
        inspect.signature(LOSSES[name]).bind(**options)
    except TypeError as exc:
        known = ", ".join(p for p in inspect.signature(LOSSES[name]).parameters)
        raise ConfigError(f"loss_options for '{name}': {exc}; its options: {known}") from None
