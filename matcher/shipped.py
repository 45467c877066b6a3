"""Files shipped inside the package (presets in ``pipelines/``, weights in ``models/``): list them, and resolve
"a path or a shipped name" the one way every command does."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from matcher.errors import MatcherError

__all__ = ["shipped_names", "resolve_shipped"]


def shipped_names(package: str, suffix: str) -> list[str]:
    """Names (without ``suffix``) of the files ending in ``suffix`` that ``package`` ships, sorted."""
    root = resources.files(package)
    return sorted(p.name[: -len(suffix)] for p in root.iterdir() if p.name.endswith(suffix))


def resolve_shipped(
    name_or_path: str, package: str, suffix: str, what: tuple[str, str], error: type[MatcherError]
) -> Path:
    """A file path (it ends in ``suffix`` or exists), else the shipped ``package/<name><suffix>``.

    Args:
        what: how messages name a shipped one and a file, e.g. ``("pipeline preset", "preset")``.
        error: the MatcherError subclass raised (one line: the missing file, or the shipped names).
    """
    candidate = Path(name_or_path)
    if candidate.suffix == suffix or candidate.exists():
        if not candidate.is_file():
            raise error(f"{candidate}: {what[1]} file not found")
        return candidate
    shipped = resources.files(package) / f"{name_or_path}{suffix}"
    if not shipped.is_file():
        names = ", ".join(shipped_names(package, suffix)) or "none yet"
        raise error(f"unknown {what[0]} '{name_or_path}' (shipped: {names}); pass a {suffix} file")
    return Path(str(shipped))
