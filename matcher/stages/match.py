"""Stage 3, matching and verification: ``features.h5`` + pairs -> ``matches.h5``.

Per pair: mutual nearest neighbours (:func:`matcher.matching.mutual_nearest_neighbours`), then MAGSAC++
(:func:`matcher.verify.verify_pair`) with the inlier threshold scaled from detection-image to full-resolution
pixels (:func:`threshold_px`). :func:`match_pair` and :func:`verify_matches` are that step, the one copy of it
(the evaluation methods and the hloc import call them too).

:func:`match_features` is resumable: pairs the matches file already holds (same settings, same image content,
valid checksums) are skipped. Results are written in pair order by the calling process, however many threads
or Ray workers computed them, so the file does not depend on them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.config import MatchingConfig, VerificationConfig
from matcher.errors import IncompatibleDatabaseError
from matcher.matching import mutual_nearest_neighbours
from matcher.pairs import read_pairs_file
from matcher.progress import progress_bar
from matcher.stages.cache import feature_settings, match_fingerprint, matching_engine, open_cache
from matcher.storage import FeatureStore, ImageFeatures, MatchStore, PairMatches, escape_name
from matcher.threads import thread_budget
from matcher.verify import verify_pair

__all__ = ["MatchCounts", "match_features", "match_pair", "verify_matches", "threshold_px"]

log = logging.getLogger("matcher")


@dataclass
class MatchCounts:
    """What :func:`match_features` did: ``pairs`` in all, ``reused`` of them found in the file, ``computed``."""

    pairs: int = 0
    reused: int = 0
    computed: int = 0


def threshold_px(threshold: float, max_edge: int, f1: ImageFeatures, f2: ImageFeatures) -> float:
    """The RANSAC ``threshold``, given in pixels of the detection image (longer edge at most ``max_edge``, 0: full
    size), in full-resolution pixels of this pair (the larger of the two images' scale factors)."""

    def factor(f: ImageFeatures) -> float:
        edge = max(f.width, f.height)
        return edge / max_edge if 0 < max_edge < edge else 1.0

    return threshold * max(factor(f1), factor(f2))


def verify_matches(
    f1: ImageFeatures, f2: ImageFeatures, matches: np.ndarray, scores: np.ndarray,
    verification: VerificationConfig, max_edge: int,
) -> PairMatches:
    """MAGSAC++ on (M, 2) keypoint ``matches`` of two images (scores (M,)): the pair as the matches file keeps it."""
    result = verify_pair(
        f1.keypoints[matches[:, 0]], f2.keypoints[matches[:, 1]],
        threshold_px(verification.threshold, max_edge, f1, f2), verification,
    )
    return PairMatches(matches, scores, result.inliers, result.F, result.H, result.model)


def match_pair(
    f1: ImageFeatures, f2: ImageFeatures, matching: MatchingConfig, verification: VerificationConfig, max_edge: int
) -> PairMatches:
    """Mutual nearest neighbours of two images' descriptors, verified (:func:`verify_matches`)."""
    matches, scores = mutual_nearest_neighbours(f1.descriptors, f2.descriptors, matching, f1.extras, f2.extras)
    return verify_matches(f1, f2, matches, scores, verification, max_edge)


class FeatureCache:
    """A small LRU of features read from the store, so memory does not grow with the number of images.

    16 images (about 2.6 MiB each at 4096 keypoints) cover sequential pairs up to an overlap of 15 without
    re-reads; exhaustive pairs re-read from the HDF5 file (the OS page cache), which costs under 1 ms per read.
    """

    def __init__(self, store: FeatureStore, capacity: int = 16) -> None:
        self.store, self.capacity = store, capacity
        self.items: OrderedDict[str, ImageFeatures] = OrderedDict()

    def get(self, name: str) -> ImageFeatures:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        features = self.store.read(name)
        self.items[name] = features
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return features


def _local_results(
    todo: list[tuple[str, str]], cache: FeatureCache, matching: MatchingConfig, verification: VerificationConfig,
    max_edge: int, workers: int,
) -> Iterator[tuple[tuple[str, str], PairMatches]]:
    """``matching.workers`` pairs at once in threads (torch, NumPy and OpenCV release the GIL), each with
    ``matching.threads`` torch threads (torch engine; the numpy engine's products are single-threaded); results
    in pair order, with a bounded look-ahead."""
    if matching.engine == "numpy":  # no torch: nothing to set
        set_threads, previous_threads, threads = (lambda _: None), 0, 0
    else:
        import torch

        set_threads, previous_threads = torch.set_num_threads, torch.get_num_threads()
        threads = matching.threads if matching.threads > 0 else previous_threads
    # Set once for the phase (the setting is process-wide): each call then finds it and leaves it alone.
    pool = ThreadPoolExecutor(workers, initializer=set_threads, initargs=(threads,))
    pending: deque[tuple[tuple[str, str], Future[PairMatches]]] = deque()
    try:
        for name1, name2 in todo:
            f1, f2 = cache.get(name1), cache.get(name2)
            pending.append(((name1, name2), pool.submit(match_pair, f1, f2, matching, verification, max_edge)))
            if len(pending) >= 2 * workers:  # bounded look-ahead: memory does not grow with the pair count
                pair, future = pending.popleft()
                yield pair, future.result()
        while pending:
            pair, future = pending.popleft()
            yield pair, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        set_threads(previous_threads)


def match_features(
    features_path: Path,
    pairs: Sequence[tuple[str, str]] | Path,
    matches_path: Path,
    matching: MatchingConfig | None = None,
    verification: VerificationConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    ray: str | None = None,
) -> MatchCounts:
    """Match and verify every pair of ``pairs`` (a list, or a ``name1 name2`` pairs file) that ``matches_path``
    does not hold yet, resumably.

    The images' features and the settings they were computed with (the detection size, for the threshold) come
    from ``features_path``; so does each image's content key (a pair whose image changed is matched again).

    Args:
        matching, verification: the config sections (default: defaults).
        threads: thread budget for ``matching.workers`` = 0 (None: :func:`matcher.threads.thread_budget`).
        ray: a Ray cluster address (``"auto"``: join or start a local one) to match on, in batches of pairs.

    Raises:
        IncompatibleDatabaseError: the matches file holds results of other settings and ``overwrite`` is False,
            or the features file was not written by :func:`matcher.stages.extract_features`.
        StorageError: a write failed (the file stays consistent; a rerun resumes).
    """
    matching, verification = matching or MatchingConfig(), verification or VerificationConfig()
    features_path = Path(features_path)
    with FeatureStore(features_path, "r") as features:
        settings = feature_settings(features_path, features)
        if isinstance(pairs, (str, os.PathLike)):  # a pairs file
            pairs = read_pairs_file(Path(pairs), sorted(features.names()))
        pairs = list(pairs)
        max_edge = int(settings["images"]["max_edge"])
        content: dict[str, str] = {}
        for name in {n for pair in pairs for n in pair}:
            if not features.has(name):
                raise IncompatibleDatabaseError(f"{features_path}: no features of {name} (named in the pairs)")
            content[name] = str(features.file[escape_name(name)].attrs.get("content", ""))
        key = match_fingerprint(features.file.attrs["fingerprint"], matching, verification, len(pairs))
        # ``auto`` as what it resolves to for these features and this many pairs (matcher.matching)
        matching = dataclasses.replace(
            matching, engine=matching_engine(features.file.attrs["fingerprint"], matching, len(pairs)))
        counts = MatchCounts(pairs=len(pairs))
        with open_cache(MatchStore, Path(matches_path), key, overwrite) as store:
            todo = []
            for name1, name2 in pairs:
                if store.usable(name1, name2, (content[name1], content[name2])):
                    counts.reused += 1
                else:
                    todo.append((name1, name2))
            bar = progress_bar(total=len(pairs), enabled=progress, desc="match", unit="pair", leave=False)
            bar.update(counts.reused)
            cache = FeatureCache(features)
            if ray:
                from matcher.distributed import match_on_ray

                results = match_on_ray(ray, todo, cache, matching, verification, max_edge)
            else:
                workers = matching.workers if matching.workers > 0 else thread_budget(threads)
                results = _local_results(todo, cache, matching, verification, max_edge, workers)
            try:
                for (name1, name2), pair in results:
                    store.write(name1, name2, pair, (content[name1], content[name2]))
                    bar.update(1)
                    counts.computed += 1
                    log.info("matched %s %s: %d matches, %d inliers [%d/%d]", name1, name2, len(pair.matches),
                             pair.num_inliers, counts.reused + counts.computed, len(pairs))
            finally:
                results.close()
                bar.close()
    return counts
