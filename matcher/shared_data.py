"""Where the real data for evaluation, benchmarks and tests lives (photos, homography sequences, scenes with
ground-truth cameras, reference weights): ``$MATCHER_SHARED_DATA``, else ``../shared/data`` beside the
checkout this package runs from. The one place that knows it; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]

_CHECKOUT = Path(__file__).resolve().parents[1]


def shared_data_dir(*parts: str) -> Path:
    """``$MATCHER_SHARED_DATA/<parts>`` or ``<checkout>/../shared/data/<parts>`` (it may not exist)."""
    root = os.environ.get("MATCHER_SHARED_DATA") or _CHECKOUT.parent / "shared" / "data"
    return Path(root).joinpath(*parts)
