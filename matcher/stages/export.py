"""Stage 4, export: ``features.h5`` + ``matches.h5`` + pairs -> a COLMAP database (written last, atomically).

The schema follows ``export.colmap_version`` (:mod:`matcher.colmap_legacy_db` before COLMAP 3.12).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from matcher.colmap_db import DatabaseImage, write_database
from matcher.colmap_legacy_db import is_legacy_version, schema_name, write_legacy_database
from matcher.config import ExportConfig
from matcher.errors import DatabaseExistsError
from matcher.pairs import read_pairs_file
from matcher.stages.cache import make_folder
from matcher.on_demand import pair_for_export, with_view_keypoints
from matcher.storage import FeatureStore, MatchStore, PairMatches, ViewStore

__all__ = ["ExportCounts", "export_database"]


@dataclass
class ExportCounts:
    """What :func:`export_database` wrote: the database's counts (images, cameras, keypoints, matched_pairs,
    verified_pairs, inlier_matches), its schema, and pairs without any match / with a verified model."""

    database: dict[str, int] = field(default_factory=dict)
    schema: str = ""
    pairs_without_matches: int = 0
    pairs_verified: int = 0


def export_database(
    image_dir: Path,
    features_path: Path,
    matches_path: Path,
    pairs: Sequence[tuple[str, str]] | Path,
    db_path: Path,
    export: ExportConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
    views_path: Path | None = None,
) -> ExportCounts:
    """Write the COLMAP database of ``names`` (default: every image of the features file, sorted; ids in that
    order) and ``pairs`` (a list or a pairs file) at ``db_path``; cameras from the images' EXIF and ``export``.

    ``views_path``: the on-demand stage's ``views.h5`` (:func:`matcher.on_demand.match_on_demand`), if it ran:
    images get their view keypoints appended, pairs solved on demand their matches from it.

    Raises:
        DatabaseExistsError: ``db_path`` exists and ``overwrite`` is False.
        StorageError: features or matches cannot be read back.
    """
    export, db_path, image_dir = export or ExportConfig(), Path(db_path), Path(image_dir)
    if db_path.exists() and not overwrite:
        raise DatabaseExistsError(f"{db_path}: database exists; pass --overwrite to replace it")
    counts = ExportCounts(schema=schema_name(export.colmap_version))
    make_folder(db_path.parent)
    writer = write_legacy_database if is_legacy_version(export.colmap_version) else write_database
    with FeatureStore(Path(features_path), "r") as features, MatchStore(Path(matches_path), "r") as matches, \
            (ViewStore(Path(views_path), "r") if views_path is not None else nullcontext()) as views:
        names = sorted(names) if names is not None else sorted(features.names())
        pairs = read_pairs_file(Path(pairs), names) if isinstance(pairs, (str, os.PathLike)) else list(pairs)

        def images() -> Iterator[DatabaseImage]:
            for name in names:
                image = features.read(name)
                if views is not None:
                    image = with_view_keypoints(name, image, views)
                yield DatabaseImage(name=name, path=image_dir / name, features=image)

        def stored_pairs() -> Iterator[tuple[str, str, PairMatches]]:
            for name1, name2 in pairs:
                pair = pair_for_export(name1, name2, matches, views)
                counts.pairs_without_matches += len(pair.matches) == 0
                counts.pairs_verified += pair.model != "none"
                yield name1, name2, pair

        counts.database = writer(db_path, images(), stored_pairs(), export)
    return counts
