"""Progress bars that draw only on a terminal, so logs of scripted runs hold no carriage returns.

tqdm's ``disable=None`` turns a bar off when its stream (stderr) is not a TTY; ``enabled=False`` and
:func:`set_quiet` (the CLI's ``-q``) turn every bar off, without importing tqdm (start-up of ``match -q``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["progress_bar", "set_quiet", "write_line"]


class _NoBar:
    """What a bar that is off needs to be: it counts nothing and draws nothing."""

    def __init__(self, iterable: Any = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn all progress bars of this process off (``-q``) or back to terminal-only."""
    global _quiet
    _quiet = bool(quiet)


def progress_bar(iterable: Any = None, *, enabled: bool | None = True, **kwargs: Any) -> Any:
    """A tqdm bar: drawn only on a terminal, never when ``enabled`` is False or in quiet mode (then a bar that
    does nothing, and tqdm is not imported)."""
    if _quiet or enabled is False:
        return _NoBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, disable=None, **kwargs)


def write_line(text: str) -> None:
    """Print a line to stderr above any bar being drawn (tqdm's ``write``; a plain print in quiet mode, where no
    bar is drawn)."""
    import sys

    if _quiet:
        print(text, file=sys.stderr)
        return
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
