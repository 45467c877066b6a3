"""Progress bars that draw only on a terminal, so logs of scripted runs hold no carriage returns.

tqdm's ``disable=None`` turns a bar off when its stream (stderr) is not a TTY; ``enabled=False`` and
:func:`set_quiet` (the CLI's ``-q``) turn every bar off.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar", "set_quiet"]

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn all progress bars of this process off (``-q``) or back to terminal-only."""
    global _quiet
    _quiet = bool(quiet)


def progress_bar(iterable: Any = None, *, enabled: bool | None = True, **kwargs: Any) -> tqdm:
    """A tqdm bar: drawn only on a terminal, never when ``enabled`` is False or in quiet mode."""
    disable = True if (_quiet or enabled is False) else None
    return tqdm(iterable, disable=disable, **kwargs)
