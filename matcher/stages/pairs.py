"""Stage 2, pairs: ``features.h5`` -> the image pairs to match (optionally a ``name1 name2`` pairs file).

The strategies are :func:`matcher.pairs.make_pairs`'s (exhaustive, sequential, retrieval over the images' own
descriptors, a file; GPS neighbours added). Pairs are not part of the matches file's fingerprint: a pair's
matches do not depend on which other pairs are matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matcher.config import PairsConfig
from matcher.pairs import make_pairs as pairs_among
from matcher.stages.cache import make_folder
from matcher.storage import FeatureStore

__all__ = ["make_pairs", "write_pairs_file"]


def write_pairs_file(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """``name1 name2`` per line (COLMAP's and hloc's pairs format, read back by ``--pairs``)."""
    make_folder(Path(path).parent)
    Path(path).write_text("".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")


def make_pairs(
    features_path: Path,
    config: PairsConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    image_dir: Path | None = None,
    all_names: Sequence[str] | None = None,
    pairs_path: Path | None = None,
) -> list[tuple[str, str]]:
    """Pairs among ``names`` (default: every image of the features file), sorted, ``name1 < name2``.

    Args:
        config: the ``pairs`` section (default: exhaustive).
        image_dir: the photo folder (GPS pairs read EXIF there).
        all_names: every image of the folder, usable or not (a pairs file may name a skipped image).
        pairs_path: also write the pairs there (:func:`write_pairs_file`).
    """
    config = config or PairsConfig()
    with FeatureStore(Path(features_path), "r") as features:
        names = sorted(names) if names is not None else sorted(features.names())
        pairs = pairs_among(config, names, list(all_names) if all_names is not None else None,
                            descriptors=lambda name: features.read(name).descriptors, image_dir=image_dir)
    if pairs_path is not None:
        write_pairs_file(pairs_path, pairs)
    return pairs
