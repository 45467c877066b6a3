"""Stage 2, pairs: ``features.h5`` -> the image pairs to match (optionally a ``name1 name2`` pairs file).

The strategies are :func:`matcher.pairs.make_pairs`'s (exhaustive, sequential, retrieval over the images' own
descriptors, a file; GPS neighbours added). Pairs are not part of the matches file's fingerprint: a pair's
matches do not depend on which other pairs are matched.

With retrieval, :func:`expand_pairs` follows the matching of those pairs: rounds of verified-neighbour pairs
(:mod:`matcher.retrieval_expansion`), each proposed from the verified results of the pairs matched before it
(read back from ``matches.h5``) and matched at once by :func:`matcher.stages.match_features`. A rerun proposes
the same pairs from the same results, so it resumes like any other matching.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matcher.config import MatchingConfig, PairsConfig, VerificationConfig
from matcher.errors import IncompatibleDatabaseError
from matcher.pairs import make_pairs as pairs_among
from matcher.retrieval_expansion import verified_neighbour_pairs
from matcher.stages.cache import make_folder
from matcher.storage import FeatureStore, MatchStore

__all__ = ["make_pairs", "write_pairs_file", "expand_pairs", "PairExpansion"]

log = logging.getLogger("matcher")


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


@dataclass
class PairExpansion:
    """What :func:`expand_pairs` did: ``pairs``, every pair of the run (the given ones and the added ones,
    sorted), ``added`` per round, and the match counts of the added pairs (``reused``: found in the file)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    reused: int = 0
    computed: int = 0


def expand_pairs(
    features_path: Path,
    pairs: Sequence[tuple[str, str]],
    matches_path: Path,
    config: PairsConfig | None = None,
    matching: MatchingConfig | None = None,
    verification: VerificationConfig | None = None,
    *,
    pairs_path: Path | None = None,
    **match_options: Any,
) -> PairExpansion:
    """Rounds of verified-neighbour pairs after ``pairs`` were matched into ``matches_path``, each matched there.

    Round r proposes, for every image, at most ``config.retrieval_k`` verified neighbours of its verified
    neighbours (pairs with >= ``config.expand_min_inliers`` inliers) that it was not matched with, from the
    results of ``pairs`` and of the earlier rounds only (never from other pairs the file may hold), so the pairs
    depend on nothing but the inputs; at most ``config.expand_rounds`` rounds, fewer when one adds nothing.
    Nothing is added when ``retrieval_k`` or ``expand_rounds`` is 0.

    Args:
        pairs: the pairs already matched (e.g. :func:`make_pairs`'s, after :func:`matcher.stages.match_features`).
        matching, verification: the config sections, as for :func:`matcher.stages.match_features`.
        pairs_path: also write every pair there (:func:`write_pairs_file`).
        match_options: passed to :func:`matcher.stages.match_features` (``overwrite``, ``progress``, ``threads``,
            ``ray``).

    Raises:
        IncompatibleDatabaseError: a pair of ``pairs`` is not in the matches file (match them first).
    """
    from matcher.stages.match import match_features

    config = config or PairsConfig()
    done = sorted(set(pairs))
    result = PairExpansion()
    names = sorted({n for pair in done for n in pair})
    verified = _verified_inliers(Path(matches_path), done)
    rounds = config.expand_rounds if config.retrieval_k > 0 else 0
    for round_number in range(1, rounds + 1):
        new = verified_neighbour_pairs(names, verified, config.retrieval_k, config.expand_min_inliers)
        if not new:
            break
        log.info("verified-neighbour pairs, round %d: %d new pairs", round_number, len(new))
        counts = match_features(features_path, new, matches_path, matching, verification, **match_options)
        result.added.append(len(new))
        result.reused, result.computed = result.reused + counts.reused, result.computed + counts.computed
        verified.update(_verified_inliers(Path(matches_path), new))
    result.pairs = sorted(verified)
    if pairs_path is not None:
        write_pairs_file(pairs_path, result.pairs)
    return result


def _verified_inliers(matches_path: Path, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """pair -> inliers of its verified model (0: none), for pairs the matches file must hold."""
    with MatchStore(matches_path, "r") as store:
        missing = next(((a, b) for a, b in pairs if not store.has(a, b)), None)
        if missing is not None:
            raise IncompatibleDatabaseError(
                f"{matches_path}: no matches of {missing[0]} {missing[1]}; match the pairs before expanding them"
            )
        return {(a, b): store.verified_inliers(a, b) for a, b in pairs}
