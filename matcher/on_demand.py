"""Matching on demand (MODS, Mishkin, Matas & Perdoch 2015): pairs that fail verification are retried with
affine view synthesis, one tilt at a time, until one verifies.

After the normal pass, a pair left unverified is retried when one of its images is weakly connected (fewer
than ``viewpoint.retry_below`` verified pairs), at most ``viewpoint.max_retries_per_image`` pairs per such
image (those with the most raw matches first). Unrelated photos in a well-matched collection are therefore not
retried, and the normal pass is untouched. For step k = 1, 2, ... (tilt ``viewpoint.tilts[k-1]``):

1. each image of a retried pair gets, once, the keypoints of its step-k views (:mod:`matcher.view_synthesis`):
   DoG on every simulated view, keypoints mapped back to the image with their affine frames, described from
   the image's own pixels through those frames (``sdgmnet``; ``rootsift`` is OpenCV's SIFT on the view itself),
   duplicates (the same location found on several views) merged. They are cached in ``views.h5``
   (:class:`matcher.storage.ViewStore`) and appended, step after step, to the image's keypoints;
2. the pair's pools (its normal keypoints + steps 1..k) are matched one-to-one: mutual nearest neighbours with
   the ratio test against the nearest neighbour lying more than ``viewpoint.spatial_px`` away from the first
   (FGINN, as MODS: a point seen on several views has near-identical descriptors nearby), then one match per
   location in each image;
3. verified with the same MAGSAC++ as the normal pass (F and H, :func:`matcher.verify.verify_pair`); the first
   step that verifies with at least ``viewpoint.retry_inliers`` inliers, and at least
   ``viewpoint.min_inlier_ratio`` of its matches as inliers, is kept (matches indexing the appended keypoints) and
   later steps are not tried. The ratio guards against the larger pools' chance agreements: on the real
   castle-P19 pair 0009/0013 (91 degrees apart, no verified match in the normal pass) step 2 found 30 "inliers"
   among 274 matches (0.11) for a pose 33 degrees off, while the 24 tilted pairs of bench/extreme_viewpoint.py
   were solved with 0.48-0.95 of their matches as inliers. When no step reaches it, the result with the most verified inliers
   (the normal pass's included) stays. Pairs the normal pass verified with fewer than ``retry_inliers`` count as
   failed: 15-20 "inliers" on a wide-baseline pair were a wrong homography in our tests.

Work is bounded: at most ``len(tilts)`` steps per pair, a fixed number of views per tilt (``180 t /
rotation_step``), ``view_keypoints`` per view. Every retried pair is logged with the step that solved it and
its time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.config import PipelineConfig
from matcher.detect import Keypoints
from matcher.images import read_image, resize_for_detection
from matcher.masks import read_mask, resize_mask
from matcher.storage import FeatureStore, ImageFeatures, MatchStore, PairMatches, ViewStore, escape_name
from matcher.view_synthesis import detect_on_views

__all__ = [
    "PairRetry",
    "parse_tilts",
    "view_features",
    "match_pools",
    "one_match_per_location",
    "retry_candidates",
    "retry_failed_pairs",
    "match_on_demand",
    "views_path",
    "with_view_keypoints",
    "pair_for_export",
    "format_retries",
]

log = logging.getLogger("matcher")


@dataclass
class PairRetry:
    """One pair retried on demand: ``step`` that verified (0: none), ``steps`` tried, ``inliers``, ``seconds``
    spent on it (matching, verification, and the view features computed for it: an image's views are computed
    for the first pair that needs them and reused by the others)."""

    name1: str
    name2: str
    step: int
    steps: int
    inliers: int
    seconds: float


def parse_tilts(text: str) -> list[float]:
    """``"2, 4, 8"`` -> [2.0, 4.0, 8.0] (one step per tilt, in order)."""
    return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]


def view_features(
    gray: np.ndarray, tilt: float, config: PipelineConfig, descriptor, mask: np.ndarray | None = None,  # noqa: ANN001
) -> tuple[Keypoints, np.ndarray]:
    """Keypoints of every view of ``tilt`` in the pixels of ``gray`` (the detection image), with descriptors.

    Args:
        gray: (h, w) uint8 detection image.
        descriptor: a :class:`matcher.descriptors.Descriptor`; ``rootsift`` describes on the view (OpenCV's
            SIFT takes no affine frame), others from ``gray`` through the keypoints' affine frames.
        mask: (h, w) uint8 detection mask or None.

    Returns:
        (n keypoints with ``shapes``, descriptors (n, D) float32), duplicates merged: of keypoints within 1 px of
        each other with scales within a factor 1.5, the one from the earlier view is kept.
    """
    found, described = [], []
    for view, in_view, in_image in detect_on_views(
        gray, tilt, config.detection, config.viewpoint.view_keypoints, config.viewpoint.rotation_step, mask
    ):
        if len(in_view) == 0:
            continue
        if descriptor.name == "rootsift":
            described.append(descriptor.describe(view.image, in_view))
        else:
            described.append(descriptor.describe(gray, in_image))
        found.append(in_image)
    if not found:
        empty = np.zeros((0,), np.float32)
        return Keypoints(np.zeros((0, 2), np.float32), empty, empty, empty, None, np.zeros((0, 2, 2), np.float32)), \
            np.zeros((0, descriptor.dim), np.float32)
    keypoints = Keypoints(
        np.concatenate([k.xy for k in found]), np.concatenate([k.scales for k in found]),
        np.concatenate([k.orientations for k in found]), np.concatenate([k.scores for k in found]), None,
        np.concatenate([k.shapes for k in found]),
    )
    keep = _first_per_location(keypoints.xy, keypoints.scales)
    return keypoints.select(keep), np.concatenate(described)[keep]


def _first_per_location(xy: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Indices (sorted) of the first keypoint per (1 px cell, scale octave-half): duplicates across views go."""
    cells = np.c_[np.round(xy).astype(np.int64), np.round(np.log(np.maximum(scales, 1e-6)) / np.log(1.5))]
    _, first = np.unique(cells, axis=0, return_index=True)
    return np.sort(first)


class _ViewProvider:
    """Computes an image's step features once (cached in the view store) and builds its matching pools."""

    def __init__(self, image_dir: Path, views: ViewStore, config: PipelineConfig,
                 content: dict[str, str] | None) -> None:
        self.image_dir, self.views, self.config = Path(image_dir), views, config
        self.content = content or {}
        self.tilts = parse_tilts(config.viewpoint.tilts)
        self.descriptor = None
        self.seconds: dict[tuple[str, int], float] = {}  # time spent computing (name, step), 0 when cached
        self.pools: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def ensure(self, name: str, step: int) -> None:
        """Steps 1..``step`` of ``name`` are in the view store (computed here if not)."""
        content = self.content.get(name)
        image = None
        for k in range(1, step + 1):
            if self.views.usable_step(name, k, content):
                self.seconds.setdefault((name, k), 0.0)
                continue
            t0 = time.perf_counter()
            if image is None:
                image = read_image(self.image_dir, name)
                small, sx, sy = resize_for_detection(image.gray, self.config.images.max_edge)
                mask = read_mask(self.config.images.mask_dir, name, image.width, image.height)
                small_mask = None if mask is None else resize_mask(mask, small.shape[1], small.shape[0])
            if self.descriptor is None:
                from matcher.descriptors import build_descriptor

                self.descriptor = build_descriptor(self.config.descriptor, self.config.patches)
            keypoints, descriptors = view_features(small, self.tilts[k - 1], self.config, self.descriptor, small_mask)
            full = keypoints.rescaled(sx, sy)
            stored = ImageFeatures(full.xy, full.scales, full.orientations, full.scores, descriptors,
                                   image.width, image.height)
            self.views.write_step(name, k, self.tilts[k - 1], stored, full.shapes, content or "")
            self.seconds[(name, k)] = time.perf_counter() - t0
            log.info("views of %s: tilt %g, %d keypoints (%.1f s)", name, self.tilts[k - 1], len(full),
                     self.seconds[(name, k)])

    def pool(self, name: str, base: ImageFeatures, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (N, 2), descriptors (N, D)): the image's features then its steps 1..``step``."""
        key = (name, step)
        if key not in self.pools:
            parts = [(base.keypoints, base.descriptors)]
            for k in range(1, step + 1):
                extra, _ = self.views.read_step(name, k)
                parts.append((extra.keypoints, extra.descriptors))
            self.pools[key] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return self.pools[key]


def match_pools(
    desc1: np.ndarray, xy1: np.ndarray, desc2: np.ndarray, xy2: np.ndarray, ratio: float, spatial_px: float,
    candidates: int = 8, block: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours with the first-geometrically-inconsistent ratio test (FGINN, MODS).

    Args:
        desc1, desc2: (N1, D), (N2, D) float32 unit rows; xy1, xy2: (N1, 2), (N2, 2) their locations.
        ratio: Lowe's ratio on L2 distances, against the nearest neighbour farther than ``spatial_px`` from the
            first in image 2 (among the ``candidates`` most similar; the last of them when none is).

    Returns:
        matches (M, 2) int32 sorted by the first index, scores (M,) float32 cosine similarities.
    """
    n1, n2 = len(desc1), len(desc2)
    if n1 == 0 or n2 < 2:
        return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
    import torch  # here only: importing this module (the export stage does) must not load torch

    d1 = torch.from_numpy(np.ascontiguousarray(desc1, np.float32))
    d2 = torch.from_numpy(np.ascontiguousarray(desc2, np.float32))
    k = min(candidates, n2)
    best_col = np.empty(n1, np.int64)
    best_sim = np.empty(n1, np.float32)
    keep = np.zeros(n1, bool)
    best_row = np.empty(n2, np.int64)
    best_row_sim = np.full(n2, -np.inf, np.float32)
    with torch.inference_mode():
        for start in range(0, n1, block):
            sims = d1[start:start + block] @ d2.T  # (b, N2)
            top = sims.topk(k, dim=1)
            values, index = top.values.numpy(), top.indices.numpy()
            far = np.linalg.norm(xy2[index] - xy2[index[:, :1]], axis=2) > spatial_px  # (b, k)
            far[:, -1] = True  # the last candidate stands in when none is far enough
            second = values[np.arange(len(values)), far.argmax(axis=1)]
            nearest_d2 = np.maximum(2.0 - 2.0 * values[:, 0], 0.0)
            second_d2 = np.maximum(2.0 - 2.0 * second, 0.0)
            rows = slice(start, start + len(values))
            best_col[rows], best_sim[rows] = index[:, 0], values[:, 0]
            keep[rows] = nearest_d2 <= ratio**2 * second_d2
            col_max = sims.max(dim=0)
            better = col_max.values.numpy() > best_row_sim
            best_row_sim[better] = col_max.values.numpy()[better]
            best_row[better] = col_max.indices.numpy()[better] + start
    rows = np.flatnonzero(keep & (best_row[best_col] == np.arange(n1)))
    return np.stack([rows, best_col[rows]], 1).astype(np.int32), best_sim[rows]


def one_match_per_location(
    matches: np.ndarray, scores: np.ndarray, xy1: np.ndarray, xy2: np.ndarray, radius: float
) -> np.ndarray:
    """Indices (sorted) of the matches kept when each ``radius`` cell of either image keeps its best match only:
    the same correspondence found through several views counts once for RANSAC and in the database."""
    if len(matches) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    kept = order
    for xy, column in ((xy1, 0), (xy2, 1)):
        cells = np.floor(xy[matches[kept, column]] / radius).astype(np.int64)
        _, first = np.unique(cells, axis=0, return_index=True)
        kept = kept[np.sort(first)]
    return np.sort(kept)


def retry_candidates(
    pairs: list[tuple[str, str]], store: MatchStore, views: ViewStore, retry_below: int, per_image: int,
    retry_inliers: int, content: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Pairs to retry: of a weakly connected image (fewer than ``retry_below`` verified pairs), its ``per_image``
    pairs unverified or verified with fewer than ``retry_inliers`` inliers, those with the most raw matches first
    (ties by name); pairs already retried successfully are not retried. Returned in the order of ``pairs``."""
    verified: dict[str, int] = {}
    failed: dict[tuple[str, str], int] = {}
    for a, b in pairs:
        verified.setdefault(a, 0)
        verified.setdefault(b, 0)
        pair_content = (content.get(a, ""), content.get(b, "")) if content is not None else None
        solved = views.solved_step(a, b, pair_content)
        if solved and not all(views.usable_step(n, k, None if content is None else content.get(n))
                              for n in (a, b) for k in range(1, solved + 1)):
            views.forget_solved(a, b)  # a damaged step group was dropped: its matches index keypoints now gone
            solved = 0
        if solved:
            verified[a] += 1
            verified[b] += 1
            continue
        pair = store.read(a, b)
        if pair.model != "none":
            verified[a] += 1
            verified[b] += 1
        if pair.model == "none" or pair.num_inliers < retry_inliers:
            failed[(a, b)] = len(pair.matches)
    chosen: set[tuple[str, str]] = set()
    for name in sorted(verified):
        if verified[name] >= retry_below:
            continue
        mine = [p for p in failed if name in p]
        mine.sort(key=lambda p: (-failed[p], p))
        chosen.update(mine[:per_image])
    return [p for p in pairs if p in chosen]


def retry_failed_pairs(
    pairs: list[tuple[str, str]], image_dir: Path, features: FeatureStore, store: MatchStore, views: ViewStore,
    config: PipelineConfig, content: dict[str, str] | None = None,
) -> list[PairRetry]:
    """Retry the :func:`retry_candidates` of ``pairs`` step by step (module docstring); a pair that verifies
    is kept in ``views`` (matches into its images' appended keypoints); ``store`` (the normal pass) is only read.

    Returns one :class:`PairRetry` per retried pair, in the order of ``pairs``.
    """
    from matcher.stages.match import threshold_px, verify_matches

    settings = config.viewpoint
    chosen = retry_candidates(pairs, store, views, settings.retry_below, settings.max_retries_per_image,
                              settings.retry_inliers, content)
    if not chosen:
        return []
    provider = _ViewProvider(image_dir, views, config, content)
    steps = len(provider.tilts)
    results = {p: PairRetry(p[0], p[1], 0, 0, 0, 0.0) for p in chosen}
    remaining = list(chosen)
    bases = {name: features.read(name) for pair in chosen for name in pair}
    best = {(a, b): (0, store.read(a, b)) for a, b in chosen}  # the most inliers so far (step 0: normal pass)

    def _keep(a: str, b: str, step: int, pair: PairMatches) -> None:
        results[(a, b)].step, results[(a, b)].inliers = step, pair.num_inliers
        pair_content = (content.get(a, ""), content.get(b, "")) if content is not None else ("", "")
        views.write_solved(a, b, step, pair, pair_content)

    for step in range(1, steps + 1):
        still = []
        for a, b in remaining:
            record = results[(a, b)]
            t0 = time.perf_counter()
            provider.ensure(a, step)
            provider.ensure(b, step)
            f1, f2 = bases[a], bases[b]
            xy1, d1 = provider.pool(a, f1, step)
            xy2, d2 = provider.pool(b, f2, step)
            spatial = threshold_px(settings.spatial_px, config.images.max_edge, f1, f2)
            matches, scores = match_pools(d1, xy1, d2, xy2, config.matching.ratio, spatial)
            keep = one_match_per_location(matches, scores, xy1, xy2, threshold_px(1.0, config.images.max_edge, f1, f2))
            matches, scores = matches[keep], scores[keep]
            # the pools as features (verification reads keypoints and image sizes only)
            p1 = ImageFeatures(xy1, xy1[:, 0], xy1[:, 0], xy1[:, 0], d1, f1.width, f1.height)
            p2 = ImageFeatures(xy2, xy2[:, 0], xy2[:, 0], xy2[:, 0], d2, f2.width, f2.height)
            pair = verify_matches(p1, p2, matches, scores, config.verification, config.images.max_edge)
            record.steps = step
            record.seconds += time.perf_counter() - t0
            log.info("on demand %s %s: step %d (tilt %g): %d matches, %d inliers%s", a, b, step,
                     provider.tilts[step - 1], len(matches), pair.num_inliers,
                     " verified" if pair.model != "none" else "")
            plausible = pair.model != "none" and pair.num_inliers >= settings.min_inlier_ratio * max(len(matches), 1)
            if plausible and pair.num_inliers > best[(a, b)][1].num_inliers:
                best[(a, b)] = (step, pair)
            if plausible and pair.num_inliers >= settings.retry_inliers:
                _keep(a, b, step, pair)
            else:
                still.append((a, b))
        remaining = still
        if not remaining:
            break
    for a, b in remaining:  # no step reached retry_inliers: the result with the most verified inliers stays
        step, pair = best[(a, b)]
        if step > 0:
            _keep(a, b, step, pair)
    for record in results.values():
        outcome = f"verified at step {record.step} ({record.inliers} inliers)" if record.step else "not verified"
        log.info("on demand %s %s: %s after %d step(s), %.1f s", record.name1, record.name2, outcome, record.steps,
                 record.seconds)
    return [results[p] for p in chosen]


def with_view_keypoints(name: str, base: ImageFeatures, views: ViewStore) -> ImageFeatures:
    """The image's features followed by its on-demand keypoints of steps 1, 2, ... (what the database holds)."""
    steps = views.steps(name)
    if not steps:
        return base
    extras = [views.read_step(name, k)[0] for k in steps]
    return ImageFeatures(
        keypoints=np.concatenate([base.keypoints, *[e.keypoints for e in extras]]),
        scales=np.concatenate([base.scales, *[e.scales for e in extras]]),
        orientations=np.concatenate([base.orientations, *[e.orientations for e in extras]]),
        scores=np.concatenate([base.scores, *[e.scores for e in extras]]),
        descriptors=np.concatenate([base.descriptors, *[e.descriptors for e in extras]]),
        width=base.width, height=base.height, focal=base.focal, focal_prior=base.focal_prior,
    )


def pair_for_export(name1: str, name2: str, matches: MatchStore, views: ViewStore | None) -> PairMatches:
    """The pair as the database gets it: solved on demand (``views``) if it was, else the normal pass's."""
    if views is not None and views.solved_step(name1, name2):
        return views.read_solved(name1, name2)
    return matches.read(name1, name2)


def views_path(matches_path: Path) -> Path:
    """``DIR/NAME.views.h5`` beside ``DIR/NAME.matches.h5``."""
    matches_path = Path(matches_path)
    stem = matches_path.name.removesuffix(".h5").removesuffix(".matches")
    return matches_path.with_name(stem + ".views.h5")


def match_on_demand(
    image_dir: Path, features_path: Path, matches_path: Path, pairs: list[tuple[str, str]], config: PipelineConfig,
    *, overwrite: bool = False,
) -> list[PairRetry]:
    """The on-demand stage: ``features.h5`` + ``matches.h5`` (the normal pass, read only) -> ``views.h5``
    (:func:`views_path`): view keypoints of the images that needed them and the pairs solved with them.

    Resumable as the other stages: ``views.h5`` keeps the fingerprint of the features file plus the
    ``matching``, ``verification`` and ``viewpoint`` sections, and each group the content keys of its images.

    Raises:
        IncompatibleDatabaseError: ``views.h5`` holds results of other settings and ``overwrite`` is False.
        StorageError: a write failed (the file stays consistent; a rerun resumes).
    """
    import json

    from matcher.stages.cache import match_fingerprint, open_cache

    with FeatureStore(Path(features_path), "r") as features, MatchStore(Path(matches_path), "r") as store:
        key = json.loads(match_fingerprint(features.file.attrs["fingerprint"], config.matching, config.verification))
        key["viewpoint"] = dict(config.viewpoint.__dict__)
        content = {name: str(features.file[escape_name(name)].attrs.get("content", ""))
                   for pair in pairs for name in pair}
        with open_cache(ViewStore, views_path(matches_path), json.dumps(key, sort_keys=True), overwrite) as views:
            return retry_failed_pairs(list(pairs), Path(image_dir), features, store, views, config, content)


def format_retries(retries: list[PairRetry]) -> str:
    """One summary line, e.g. ``on demand: 3 pairs retried, 2 verified (step 1: 1, step 2: 1), 41.2 s``."""
    solved = [r for r in retries if r.step]
    by_step = ", ".join(f"step {k}: {sum(r.step == k for r in solved)}" for k in sorted({r.step for r in solved}))
    return (f"on demand: {len(retries)} pair(s) retried, {len(solved)} verified" + (f" ({by_step})" if by_step else "")
            + f", {sum(r.seconds for r in retries):.1f} s")
