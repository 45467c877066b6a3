"""Image pairs to match: exhaustive, sequential with an overlap, read from a file, or by retrieval.

Retrieval (:mod:`matcher.retrieval`) pairs each image with its ``retrieval_k`` most similar images; with the
``sequential`` or ``file`` strategy a ``retrieval_k`` above 0 adds those pairs to the strategy's own.
``gps_k`` above 0 adds, to any strategy's pairs, each image with its ``gps_k`` nearest by EXIF GPS
(:mod:`matcher.gps`).
Every pair is returned once, as ``(name1, name2)`` with ``name1 < name2``, sorted; pairs are over the
images that have features (skipped images are left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from matcher.config import PairsConfig
from matcher.errors import ConfigError, PairsFileError

__all__ = ["exhaustive_pairs", "sequential_pairs", "read_pairs_file", "make_pairs"]


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def exhaustive_pairs(names: list[str]) -> list[tuple[str, str]]:
    """All N (N - 1) / 2 pairs."""
    names = sorted(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def sequential_pairs(names: list[str], overlap: int) -> list[tuple[str, str]]:
    """Each image with the next ``overlap`` images in name order (for video frames and ordered captures)."""
    if overlap < 1:
        raise ConfigError(f"pairs.overlap must be at least 1, got {overlap}")
    names = sorted(names)
    return [(a, names[j]) for i, a in enumerate(names) for j in range(i + 1, min(i + 1 + overlap, len(names)))]


def read_pairs_file(path: Path, names: list[str]) -> list[tuple[str, str]]:
    """Read ``name1 name2`` lines (COLMAP/hloc format; ``#`` comments and blank lines ignored).

    Pairs naming an image that was skipped (unreadable) are dropped; a name that is not an image of the folder
    at all is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found")
    known = set(names)
    pairs: set[tuple[str, str]] = set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PairsFileError(f"{path}: not UTF-8 text (byte {exc.start}); expected 'name1 name2' lines") from None
    except OSError as exc:
        raise PairsFileError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise PairsFileError(f"{path}:{number}: expected 'name1 name2', got '{raw.strip()}'")
        a, b = parts
        if a == b:
            continue
        for name in (a, b):
            if name not in known:
                raise PairsFileError(f"{path}:{number}: '{name}' is not an image of the folder")
        pairs.add(_ordered(a, b))
    return sorted(pairs)


def make_pairs(
    config: PairsConfig,
    names: list[str],
    all_names: list[str] | None = None,
    descriptors: Callable[[str], np.ndarray] | None = None,
    image_dir: Path | None = None,
) -> list[tuple[str, str]]:
    """Pairs among ``names`` by the configured strategy (plus GPS neighbours when ``gps_k`` > 0).

    ``all_names`` are every image of the folder, usable ones or not: a pairs file may name a skipped image.
    ``descriptors``: name -> the image's local descriptors (n, D), needed for retrieval. ``image_dir``: the
    folder of the images, needed for GPS.
    """
    pairs = _strategy_pairs(config, names, all_names, descriptors)
    if config.gps_k > 0 and config.strategy != "exhaustive":
        from matcher.gps import gps_pairs, gps_position

        if image_dir is None:
            raise ConfigError("GPS pairs need the image folder")
        positions = {n: p for n in names if (p := gps_position(Path(image_dir) / n)) is not None}
        pairs = sorted(set(pairs) | set(gps_pairs(names, positions, config.gps_k)))
    return pairs


def _strategy_pairs(
    config: PairsConfig,
    names: list[str],
    all_names: list[str] | None,
    descriptors: Callable[[str], np.ndarray] | None,
) -> list[tuple[str, str]]:
    if config.retrieval_k < 0:
        raise ConfigError(f"pairs.retrieval_k must be 0 (off) or more, got {config.retrieval_k}")
    if config.strategy == "exhaustive":
        return exhaustive_pairs(names)
    if config.strategy == "retrieval":
        if config.retrieval_k < 1:
            raise ConfigError("pairs.strategy = 'retrieval' needs pairs.retrieval_k >= 1 (--retrieval K)")
        return _retrieved(config, names, descriptors)
    if config.strategy == "sequential":
        pairs = sequential_pairs(names, config.overlap)
    elif config.strategy == "file":
        if not config.pairs_file:
            raise ConfigError("pairs.strategy = 'file' needs pairs.pairs_file (--pairs FILE)")
        usable = set(names)
        pairs = read_pairs_file(Path(config.pairs_file), all_names or names)
        pairs = [p for p in pairs if p[0] in usable and p[1] in usable]
    else:
        raise ConfigError(
            f"unknown pairs.strategy '{config.strategy}'; known: exhaustive, sequential, retrieval, file"
        )
    if config.retrieval_k > 0:
        pairs = sorted(set(pairs) | set(_retrieved(config, names, descriptors)))
    return pairs


def _retrieved(
    config: PairsConfig, names: list[str], descriptors: Callable[[str], np.ndarray] | None
) -> list[tuple[str, str]]:
    from matcher.retrieval import retrieval_pairs

    if descriptors is None:
        raise ConfigError("retrieval pairs need the images' descriptors (features.h5)")
    return retrieval_pairs(names, descriptors, config.retrieval_k, words=config.retrieval_words)
