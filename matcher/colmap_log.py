"""COLMAP's log: one context manager that silences its INFO lines (thousands per extraction or mapping)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_colmap"]


@contextmanager
def quiet_colmap(level: int = 2) -> Iterator[None]:
    """Raise pycolmap's ``minloglevel`` to at least ``level`` (2: warnings and errors hidden too, 1: INFO
    hidden) for the block, and restore the previous level after it, also on error."""
    import pycolmap

    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(previous, level)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous
