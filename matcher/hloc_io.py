"""hloc interop: our features and matches in hloc's HDF5 layout, and hloc's files into our database.

hloc (cvg/Hierarchical-Localization) layout, as its ``extract_features.py``, ``match_features.py`` and
``utils/io.py`` write and read it:

``features.h5``, one group per image name (a ``/`` in the name makes nested groups, as ``create_group`` does):

    keypoints    (N, 2) float32  pixels of the full image, centre of the top-left pixel = (0, 0) (hloc adds the
                                 0.5 itself when importing into COLMAP: ``triangulation.import_features``)
    descriptors  (D, N) float32  transposed: one column per keypoint
    scores       (N,)   float32
    image_size   (2,)   int      (width, height)

  plus, written by us and ignored by hloc, ``scales`` (N,) DoG sigma in pixels and ``orientations`` (N,) radians
  counter-clockwise on screen, so that an export read back gives COLMAP keypoints identical to ours.

``matches.h5``, one group per pair named ``names_to_pair(name0, name1)`` = ``name0/name1`` with every ``/``
inside a name replaced by ``-`` (so ``name0`` is a group holding ``name1``):

    matches0          (N0,) int32    index into name1's keypoints for each keypoint of name0, -1 for none
    matching_scores0  (N0,) float32  0 where unmatched

``pairs.txt``: one ``name0 name1`` per line.

The export writes our raw (mutual nearest neighbour) matches, as hloc's matchers do, or only the RANSAC
inliers (``inliers_only``, for hloc's ``skip_geometric_verification``). The import reads hloc's raw matches
and verifies them with our RANSAC (:func:`matcher.stages.verify_matches`, the pipeline's threshold and
settings), so the database holds raw matches and verified two-view geometries exactly as ``match`` writes
them; with the same features and matches it is the same database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from matcher.config import PipelineConfig
from matcher.errors import IncompatibleDatabaseError, PairsFileError
from matcher.storage import FeatureStore, ImageFeatures, MatchStore, PairMatches

__all__ = [
    "names_to_pair",
    "names_to_pair_old",
    "export_hloc",
    "read_hloc_features",
    "read_hloc_matches",
    "read_pairs_file",
    "import_hloc",
]

log = logging.getLogger("matcher")


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key (``hloc/utils/parsers.py``): ``name0/name1`` with ``/`` inside names replaced by ``-``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's older pair key, ``name0_name1`` (still looked up by hloc's ``find_pair``)."""
    return names_to_pair(name0, name1, separator="_")


def _feature_names(store: FeatureStore) -> list[str]:
    return sorted(store.names())


def export_hloc(db_stem: Path, out_dir: Path, inliers_only: bool = False) -> dict[str, int]:
    """Write ``features.h5``, ``matches.h5`` and ``pairs.txt`` in hloc's layout into ``out_dir``.

    Args:
        db_stem: a run's database path or stem (``DIR/NAME.db`` or ``DIR/NAME``): its ``NAME.features.h5`` and
            ``NAME.matches.h5`` are read.
        inliers_only: export only the verified inliers of each pair instead of all raw matches.

    Returns:
        counts: images, keypoints, pairs, matches.
    """
    from matcher.pipeline import OutputPaths

    db_stem = Path(db_stem)
    paths = OutputPaths(db_stem if db_stem.suffix == ".db" else db_stem.with_name(db_stem.name + ".db"))
    for path in (paths.features, paths.matches):
        if not path.is_file():
            raise IncompatibleDatabaseError(f"{path}: not found (export hloc reads a run's features and matches)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = dict(images=0, keypoints=0, pairs=0, matches=0)
    sizes: dict[str, int] = {}
    targets = {k: out_dir / f"{k}.h5" for k in ("features", "matches")}
    partial = {k: p.with_name(p.name + ".partial") for k, p in targets.items()}
    pairs_path = out_dir / "pairs.txt"
    with FeatureStore(paths.features, "r") as features, h5py.File(partial["features"], "w") as out:
        for name in _feature_names(features):
            f = features.read(name)
            group = out.create_group(name)
            group.create_dataset("keypoints", data=f.keypoints.astype(np.float32))
            group.create_dataset("descriptors", data=np.ascontiguousarray(f.descriptors.T, np.float32))
            group.create_dataset("scores", data=f.scores.astype(np.float32))
            group.create_dataset("image_size", data=np.array([f.width, f.height], np.int64))
            group.create_dataset("scales", data=f.scales.astype(np.float32))
            group.create_dataset("orientations", data=f.orientations.astype(np.float32))
            sizes[name] = len(f)
            counts["images"] += 1
            counts["keypoints"] += len(f)
    lines = []
    with MatchStore(paths.matches, "r") as matches, h5py.File(partial["matches"], "w") as out:
        for key in sorted(matches.file.keys()):
            name0, name1 = (part.replace("%2F", "/").replace("%25", "%") for part in key.split("|"))
            if name0 not in sizes or name1 not in sizes:
                continue
            pair = matches.read(name0, name1)
            kept = pair.inliers if inliers_only else np.ones(len(pair.matches), bool)
            matches0 = np.full(sizes[name0], -1, np.int32)
            scores0 = np.zeros(sizes[name0], np.float32)
            matches0[pair.matches[kept, 0]] = pair.matches[kept, 1]
            scores0[pair.matches[kept, 0]] = pair.scores[kept]
            group = out.create_group(names_to_pair(name0, name1))
            group.create_dataset("matches0", data=matches0)
            group.create_dataset("matching_scores0", data=scores0)
            lines.append(f"{name0} {name1}\n")
            counts["pairs"] += 1
            counts["matches"] += int(kept.sum())
    pairs_path.write_text("".join(lines))
    for key, path in targets.items():
        partial[key].replace(path)
    return counts


def read_hloc_features(path: Path, name: str) -> ImageFeatures:
    """One image of an hloc ``features.h5`` as our :class:`ImageFeatures` (descriptors back to (N, D)).

    Without ``scales``/``orientations`` (hloc's own extractors), scale 1 and orientation 0 are used, which is
    what COLMAP reads from a two-column keypoint blob.
    """
    with h5py.File(path, "r") as f:
        if name not in f or "keypoints" not in f[name]:
            raise IncompatibleDatabaseError(f"{path}: no keypoints for image '{name}'")
        group = f[name]
        keypoints = group["keypoints"][()].astype(np.float32)
        n = len(keypoints)
        descriptors = group["descriptors"][()].T.astype(np.float32) if "descriptors" in group else np.zeros((n, 0))
        if descriptors.shape[0] != n:
            raise IncompatibleDatabaseError(
                f"{path}: '{name}' has {n} keypoints but descriptors of shape {group['descriptors'].shape} (D, N)"
            )
        if "image_size" not in group:
            raise IncompatibleDatabaseError(f"{path}: no image_size for image '{name}'")
        width, height = (int(v) for v in group["image_size"][()])
        return ImageFeatures(
            keypoints=keypoints,
            scales=group["scales"][()].astype(np.float32) if "scales" in group else np.ones(n, np.float32),
            orientations=(
                group["orientations"][()].astype(np.float32) if "orientations" in group else np.zeros(n, np.float32)
            ),
            scores=group["scores"][()].astype(np.float32) if "scores" in group else np.zeros(n, np.float32),
            descriptors=descriptors,
            width=width,
            height=height,
        )


def read_hloc_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) int32 matches ``[index in name0, index in name1]`` sorted by the first, and (M,) float32 scores.

    Looks the pair up as hloc's ``find_pair`` does: ``name0/name1``, ``name1/name0`` (matches swapped), then
    the old ``name0_name1`` keys. Raises PairsFileError when the pair is missing.
    """
    with h5py.File(path, "r") as f:
        for key, reverse in (
            (names_to_pair(name0, name1), False),
            (names_to_pair(name1, name0), True),
            (names_to_pair_old(name0, name1), False),
            (names_to_pair_old(name1, name0), True),
        ):
            if key in f and "matches0" in f[key]:
                matches0 = f[key]["matches0"][()].astype(np.int64)
                scores0 = (
                    f[key]["matching_scores0"][()].astype(np.float32)
                    if "matching_scores0" in f[key]
                    else np.ones(len(matches0), np.float32)
                )
                break
        else:
            raise PairsFileError(f"{path}: no matches for the pair {name0} {name1}")
    index = np.flatnonzero(matches0 > -1)
    matches = np.stack([index, matches0[index]], -1).astype(np.int32)
    scores = scores0[index]
    if reverse:
        matches = matches[:, ::-1]
        order = np.argsort(matches[:, 0], kind="stable")
        matches, scores = np.ascontiguousarray(matches[order]), scores[order]
    return matches, scores


def read_pairs_file(path: Path) -> list[tuple[str, str]]:
    """``name0 name1`` per line (hloc and COLMAP pairs files); each unordered pair once, in file order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsFileError(f"{path}: cannot read pairs file ({exc})") from None
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise PairsFileError(f"{path}:{number}: expected 'name0 name1', got '{line}'")
        key = frozenset(parts)
        if parts[0] == parts[1] or key in seen:
            continue
        seen.add(key)
        pairs.append((parts[0], parts[1]))
    return pairs


def _verified_pairs(
    pairs: list[tuple[str, str]], matches_path: Path, features: dict[str, ImageFeatures], config: PipelineConfig
) -> Iterator[tuple[str, str, PairMatches]]:
    from matcher.stages import verify_matches  # the pipeline's verification step: one home

    for name0, name1 in pairs:
        matches, scores = read_hloc_matches(matches_path, name0, name1)
        f0, f1 = features[name0], features[name1]
        if len(matches) and (matches.max(0) >= (len(f0), len(f1))).any():
            raise IncompatibleDatabaseError(f"{matches_path}: pair {name0} {name1} indexes missing keypoints")
        yield name0, name1, verify_matches(f0, f1, matches, scores, config.verification, config.images.max_edge)


def import_hloc(
    features_path: Path,
    matches_path: Path,
    pairs_path: Path,
    image_dir: Path,
    db_path: Path,
    config: PipelineConfig,
    overwrite: bool = False,
) -> dict[str, int]:
    """Build a COLMAP database from hloc's ``features.h5``/``matches.h5``/pairs file.

    Cameras come from the images under ``image_dir`` (EXIF) as in ``match``; hloc's matches are the raw matches
    and are verified with our RANSAC. The schema follows ``config.export.colmap_version``.

    Returns:
        the database counts of :func:`matcher.colmap_db.write_database`.
    """
    from matcher.colmap_db import DatabaseImage, write_database
    from matcher.colmap_legacy_db import is_legacy_version, write_legacy_database
    from matcher.errors import DatabaseExistsError

    db_path, image_dir = Path(db_path), Path(image_dir)
    if db_path.exists() and not overwrite:
        raise DatabaseExistsError(f"{db_path}: database exists; pass --overwrite to replace it")
    for path in (features_path, matches_path):
        if not Path(path).is_file():
            raise IncompatibleDatabaseError(f"{path}: not found")
    pairs = read_pairs_file(pairs_path)
    names = sorted({name for pair in pairs for name in pair})
    features = {name: read_hloc_features(features_path, name) for name in names}
    for name in names:
        if not (image_dir / name).is_file():
            raise IncompatibleDatabaseError(f"{image_dir / name}: image not found (named in {pairs_path})")
    images = (DatabaseImage(name=name, path=image_dir / name, features=features[name]) for name in names)
    writer = write_legacy_database if is_legacy_version(config.export.colmap_version) else write_database
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return writer(db_path, images, _verified_pairs(pairs, Path(matches_path), features, config), config.export)
