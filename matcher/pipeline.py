"""The ``match`` pipeline: a folder of photos -> features.h5 -> matches.h5 -> COLMAP database [-> model].

Outputs beside the database ``DIR/NAME.db``:

* ``DIR/NAME.features.h5`` and ``DIR/NAME.matches.h5`` (layout in :mod:`matcher.storage`), which make a rerun
  skip finished images and pairs, and let a killed run resume;
* ``DIR/NAME.config.toml``: the merged configuration (a valid preset file).

The database itself is written last, atomically. An existing database is never replaced unless
``overwrite=True``. Cached features and matches are reused only if they were computed with the same
settings (a fingerprint of the relevant config sections and the descriptor weights is kept in each file) from
the same file content (the SHA-1 of each image is kept with its features and with each pair's matches), and
read back with valid checksums. One run at a time writes an output (:mod:`matcher.output_lock`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from matcher.colmap_db import DatabaseImage, camera_params, focal_prior, write_database
from matcher.colmap_legacy_db import is_legacy_version, schema_name, write_legacy_database
from matcher.config import PipelineConfig, config_to_toml, validate_config
from matcher.descriptors import build_descriptor, descriptor_settings, load_sdgmnet, resolve_weights
from matcher.detect import detect_keypoints
from matcher.errors import (
    ConfigError, DatabaseExistsError, ImageReadError, IncompatibleDatabaseError, NoImagesError, StorageError,
)
from matcher.images import list_images, read_image, resize_for_detection, scan_folder
from matcher.matching import mutual_nearest_neighbours, similarity_dtype
from matcher.output_lock import OutputLock
from matcher.pairs import make_pairs, read_pairs_file
from matcher.progress import progress_bar
from matcher.mapping import ReconstructionSummary, model_path, reconstruct
from matcher.masks import mask_path, masks_digest, read_mask, resize_mask, unmasked
from matcher.storage import FeatureStore, ImageFeatures, MatchStore, PairMatches, ensure_space
from matcher.threads import thread_budget
from matcher.undistortion import UndistortSummary, undistort
from matcher.verify import verify_pair

__all__ = ["OutputPaths", "RunReport", "run_match", "extract_all", "match_all"]

log = logging.getLogger("matcher")


@dataclass
class OutputPaths:
    """Where a run writes, derived from the database path."""

    database: Path

    @property
    def features(self) -> Path:
        return self.database.with_name(self.database.stem + ".features.h5")

    @property
    def matches(self) -> Path:
        return self.database.with_name(self.database.stem + ".matches.h5")

    @property
    def config(self) -> Path:
        return self.database.with_name(self.database.stem + ".config.toml")


@dataclass
class RunReport:
    """What a run did, for the end-of-run summary."""

    images_found: int = 0
    images_used: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_reused: int = 0
    pairs: int = 0
    pairs_reused: int = 0
    pairs_without_matches: int = 0
    pairs_verified: int = 0
    database: dict[str, int] = field(default_factory=dict)
    database_schema: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    reconstruction: ReconstructionSummary | None = None
    undistorted: UndistortSummary | None = None
    threads: dict[str, int] = field(default_factory=dict)

    def to_dict(self, paths: OutputPaths) -> dict:
        """The summary as plain JSON types (``match --json``): the fields above plus the output paths."""
        data = dataclasses.asdict(self)
        data["skipped"] = [{"name": name, "reason": reason} for name, reason in self.skipped]
        data["outputs"] = {"database": str(paths.database), "features": str(paths.features),
                           "matches": str(paths.matches), "config": str(paths.config)}
        return data

    def format(self, paths: OutputPaths) -> str:
        lines = [
            f"images: {len(self.images_used)} used of {self.images_found} found"
            + (f" ({self.images_reused} features reused)" if self.images_reused else ""),
            f"pairs: {self.pairs} matched, {self.pairs_verified} verified, "
            f"{self.pairs_without_matches} without matches"
            + (f" ({self.pairs_reused} reused)" if self.pairs_reused else ""),
        ]
        if self.database:
            d = self.database
            lines.append(
                f"database: {paths.database} ({d['images']} images, {d['cameras']} cameras, {d['keypoints']} keypoints, "
                f"{d['verified_pairs']} verified pairs, {d['inlier_matches']} inlier matches)"
                + (f", {self.database_schema}" if self.database_schema else "")
            )
        if self.reconstruction is not None:
            lines.append(f"reconstruction: {self.reconstruction.format()}")
        if self.undistorted is not None:
            lines.append(f"undistorted: {self.undistorted.format()}")
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines.extend(f"  {name}: {reason}" for name, reason in self.skipped)
        return "\n".join(lines)


def _fingerprint(config: PipelineConfig, sections: tuple[str, ...], masks: str = "") -> str:
    """``masks``: :func:`matcher.masks.masks_digest` of the run (the masks' content, not their folder's path)."""
    data = {s: dict(getattr(config, s).__dict__) for s in sections}  # copies: the config is not touched
    if "images" in data and data["images"].pop("mask_dir", ""):
        data["masks_sha256"] = masks
    if config.descriptor.name == "sdgmnet":
        path = resolve_weights(config.descriptor.weights)
        data["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        data.get("descriptor", {}).update(descriptor_settings(config.descriptor), bf16=None)  # auto -> resolved
    # Settings that do not change results are left out; ``auto`` precision is recorded as what it resolves to.
    data.get("descriptor", {}).pop("batch_size", None)
    if "matching" in data:
        for key in ("threads", "workers"):
            data["matching"].pop(key, None)
        data["matching"]["precision"] = str(similarity_dtype(config.matching.precision))
    return json.dumps(data, sort_keys=True)


FEATURE_SECTIONS = ("images", "detection", "patches", "descriptor")
MATCH_SECTIONS = FEATURE_SECTIONS + ("matching", "verification")


def _open_cache(store_type: type, path: Path, fingerprint: str, overwrite: bool):
    """Open (create) a cache for this run's settings. A cache of other settings that holds results is refused
    without ``overwrite``; one that holds nothing (a run that failed before computing anything) is reused. The
    fingerprint is written only when it changes (a write can fail on a full disk)."""
    store = store_type(path, "a")
    stored = store.file.attrs.get("fingerprint", None)
    if stored is not None and stored != fingerprint and len(store.file.keys()) > 0:
        store.close()
        if not overwrite:
            raise IncompatibleDatabaseError(
                f"{path}: cached {store_type.kind} were computed with other settings; "
                "pass --overwrite to recompute them"
            )
        path.unlink()
        store = store_type(path, "a")
    if store.file.attrs.get("fingerprint", None) != fingerprint:
        ensure_space(path, 4096, "the cache's settings")
        store.file.attrs["fingerprint"] = fingerprint
    return store


def _same_content_groups(
    image_dir: Path, names: list[str], hashes: dict[str, str] | None = None
) -> dict[str, str]:
    """name -> why it is left out: the earlier name it duplicates (same bytes, or the same name up to letter
    case), or that it cannot be read. ``hashes`` is filled with the SHA-1 of every file read (the caches'
    content keys: features and matches of a changed file are recomputed)."""
    seen_hash: dict[str, str] = {}
    seen_lower: dict[str, str] = {}
    duplicate_of: dict[str, str] = {}
    for name in names:
        lower = name.lower()
        if lower in seen_lower:
            duplicate_of[name] = f"name differs from {seen_lower[lower]} only by letter case"
            continue
        seen_lower[lower] = name
        try:
            with open(image_dir / name, "rb") as file:
                digest = hashlib.file_digest(file, "sha1").hexdigest()
        except OSError as exc:
            duplicate_of[name] = f"cannot read file ({exc.strerror or exc})"
            continue
        if hashes is not None:
            hashes[name] = digest
        if digest in seen_hash:
            duplicate_of[name] = f"same file content as {seen_hash[digest]}"
            continue
        seen_hash[digest] = name
    return duplicate_of


def extract_all(
    image_dir: Path, names: list[str], store: FeatureStore, config: PipelineConfig, report: RunReport, progress: bool,
    content: dict[str, str] | None = None,
) -> None:
    """Detect and describe every image that the store does not hold yet; record skipped files in ``report``.

    ``content``: name -> SHA-1 of the file; features computed from other content (the file was edited or
    replaced) or that fail their checksums are recomputed. Raises StorageError when a write fails.
    """
    descriptor = None
    bar = progress_bar(names, enabled=progress, desc="extract", unit="img", leave=False)
    for name in bar:
        if store.usable(name, content.get(name) if content is not None else None):
            report.images_used.append(name)
            report.images_reused += 1
            continue
        try:
            image = read_image(image_dir, name)
            mask = read_mask(config.images.mask_dir, name, image.width, image.height)
            small, sx, sy = resize_for_detection(image.gray, config.images.max_edge)
            if mask is None:
                keypoints = detect_keypoints(small, config.detection)
            else:  # COLMAP's rule, exactly, at full resolution (the detection mask is its resized copy)
                keypoints = detect_keypoints(small, config.detection, resize_mask(mask, small.shape[1], small.shape[0]))
                keypoints = keypoints.select(unmasked(keypoints.rescaled(sx, sy).xy, mask))
            if len(keypoints) == 0:
                why = "masked out" if mask is not None else "image too small or too flat"
                raise ImageReadError(f"{image_dir / name}: no keypoints ({why})")
        except ImageReadError as exc:
            log.warning("skipped %s", exc)
            report.skipped.append((name, str(exc).split(": ", 1)[-1]))
            continue
        focal, has_prior = focal_prior(image_dir / name, image.width, image.height)
        if descriptor is None:
            descriptor = build_descriptor(config.descriptor, config.patches)
        descriptors = descriptor.describe(small, keypoints)
        full = keypoints.rescaled(sx, sy)
        store.write(
            name,
            ImageFeatures(
                keypoints=full.xy,
                scales=full.scales,
                orientations=full.orientations,
                scores=full.scores,
                descriptors=descriptors,
                width=image.width,
                height=image.height,
                focal=focal,
                focal_prior=has_prior,
            ),
            descriptor=config.descriptor.name,
            content=content.get(name, "") if content is not None else "",
        )
        report.images_used.append(name)
        log.info("extracted %s (%d keypoints) [%d/%d]", name, len(keypoints), len(report.images_used), len(names))


class _FeatureCache:
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


def _threshold_px(config: PipelineConfig, f1: ImageFeatures, f2: ImageFeatures) -> float:
    """The RANSAC threshold, given in detection-image pixels, in full-resolution pixels of this pair."""

    def factor(f: ImageFeatures) -> float:
        edge = max(f.width, f.height)
        return edge / config.images.max_edge if 0 < config.images.max_edge < edge else 1.0

    return config.verification.threshold * max(factor(f1), factor(f2))


def _pair_content(content: dict[str, str] | None, name1: str, name2: str) -> tuple[str, str]:
    return (content.get(name1, ""), content.get(name2, "")) if content is not None else ("", "")


def match_all(
    pairs: list[tuple[str, str]],
    features: FeatureStore,
    store: MatchStore,
    config: PipelineConfig,
    report: RunReport,
    progress: bool,
    threads: int | None = None,
    content: dict[str, str] | None = None,
) -> None:
    """Match and verify every pair the store does not hold yet (``content``: name -> SHA-1 of the image file;
    a pair whose images changed, or whose group fails its checksums, is matched again).

    ``matching.workers`` pairs are matched and verified at once in threads (torch, NumPy and OpenCV release
    the GIL), each with ``matching.threads`` torch threads; results are written in pair order by this thread,
    so the files do not depend on the number of workers, and a killed run loses only the pairs in flight.
    """
    cache = _FeatureCache(features)
    workers = config.matching.workers if config.matching.workers > 0 else thread_budget(threads)

    def match_pair(f1: ImageFeatures, f2: ImageFeatures) -> PairMatches:
        matches, scores = mutual_nearest_neighbours(f1.descriptors, f2.descriptors, config.matching)
        result = verify_pair(
            f1.keypoints[matches[:, 0]], f2.keypoints[matches[:, 1]], _threshold_px(config, f1, f2), config.verification
        )
        return PairMatches(matches, scores, result.inliers, result.F, result.H, result.model)

    def write_oldest() -> None:
        nonlocal done
        (name1, name2), future = pending.popleft()
        pair = future.result()
        store.write(name1, name2, pair, _pair_content(content, name1, name2))
        bar.update(1)
        done += 1
        log.info("matched %s %s: %d matches, %d inliers [%d/%d]", name1, name2, len(pair.matches),
                 pair.num_inliers, done, len(pairs))

    bar = progress_bar(total=len(pairs), enabled=progress, desc="match", unit="pair", leave=False)
    pending: deque[tuple[tuple[str, str], Future[PairMatches]]] = deque()
    done = 0  # pairs finished, reused ones included (tqdm's own count stays 0 when the bar is disabled)
    threads = config.matching.threads if config.matching.threads > 0 else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    # Set once for the phase (the setting is process-wide): each call then finds it and leaves it alone.
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(threads,))
    try:
        for name1, name2 in pairs:
            if store.usable(name1, name2, _pair_content(content, name1, name2) if content is not None else None):
                report.pairs_reused += 1
                bar.update(1)
                done += 1
                continue
            f1, f2 = cache.get(name1), cache.get(name2)
            pending.append(((name1, name2), pool.submit(match_pair, f1, f2)))
            if len(pending) >= 2 * workers:  # bounded look-ahead: memory does not grow with the pair count
                write_oldest()
        while pending:
            write_oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous_threads)
        bar.close()


def _database_images(image_dir: Path, names: list[str], features: FeatureStore) -> Iterator[DatabaseImage]:
    for name in names:
        yield DatabaseImage(name=name, path=image_dir / name, features=features.read(name))


def _database_pairs(
    pairs: list[tuple[str, str]], store: MatchStore, report: RunReport
) -> Iterator[tuple[str, str, PairMatches]]:
    for name1, name2 in pairs:
        pair = store.read(name1, name2)
        if len(pair.matches) == 0:
            report.pairs_without_matches += 1
        if pair.model != "none":
            report.pairs_verified += 1
        yield name1, name2, pair


def _guarded_output(run):  # noqa: ANN001, ANN202 (a decorator keeping run_match's signature)
    """``run_match`` inside one writer's lock on the output (:class:`matcher.output_lock.OutputLock`).

    Folders created for the output are removed again if the run leaves them empty, and a run that finds no
    usable image removes the files it created: such a run writes nothing.
    """

    @functools.wraps(run)
    def guarded(image_dir: Path, db_path: Path, *args, **kwargs) -> RunReport:  # noqa: ANN002, ANN003
        paths = OutputPaths(Path(db_path))
        created_dirs = [d for d in (paths.database.parent, *paths.database.parent.parents) if not d.exists()]
        created_files = [p for p in (paths.config, paths.features, paths.matches) if not p.exists()]
        try:
            paths.database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{paths.database.parent}: cannot create the output folder ({exc.strerror or exc})") from None
        lock = OutputLock(paths.database).acquire()
        try:
            return run(image_dir, db_path, *args, **kwargs)
        except NoImagesError:
            for path in created_files:
                path.unlink(missing_ok=True)
            raise
        finally:
            lock.release()
            for folder in created_dirs:  # deepest first; only empty ones go
                try:
                    folder.rmdir()
                except OSError:
                    break

    return guarded


def _check_inputs(config: PipelineConfig, names: list[str], reconstruct_dir: Path | None) -> None:
    """Errors in the options and the files they name, found before anything is written."""
    validate_config(config)
    if reconstruct_dir is not None and Path(reconstruct_dir).exists() and not Path(reconstruct_dir).is_dir():
        raise ConfigError(f"{reconstruct_dir}: --reconstruct needs a folder, this is a file")
    if config.pairs.strategy == "file" and config.pairs.pairs_file:
        read_pairs_file(Path(config.pairs.pairs_file), names)
    if config.descriptor.name == "sdgmnet":
        load_sdgmnet(config.descriptor.weights)  # bad types, NaN weights: ModelWeightsError before any write


@_guarded_output
def run_match(
    image_dir: Path,
    db_path: Path,
    config: PipelineConfig,
    overwrite: bool = False,
    reconstruct_dir: Path | None = None,
    progress: bool = True,
    undistort_dir: Path | None = None,
    text: bool = False,
    threads: int | None = None,
) -> RunReport:
    """Run the whole pipeline. See the module docstring for what is written where.

    Args:
        reconstruct_dir: also run SfM; the models go to ``reconstruct_dir/0`` (the largest), ``/1``...
        progress: progress bars (drawn only when stderr is a terminal).
        undistort_dir: also undistort the largest model there (:mod:`matcher.undistortion`); needs ``reconstruct_dir``.
        text: write the models as COLMAP text files too.
        threads: thread budget (None: CPU affinity capped by ``OMP_NUM_THREADS``, :mod:`matcher.threads`).

    Raises:
        NoImagesError: the folder is missing or has no usable image (nothing is written, nothing replaced).
        OutputBusyError: another run is writing ``db_path``.
        StorageError: a file cannot be written (disk full, I/O error, permissions): caches stay consistent,
            a rerun resumes.
        DatabaseExistsError: the database exists and ``overwrite`` is False (nothing is written).
        ConfigError: bad camera parameters, a missing mask folder, ``undistort_dir`` without ``reconstruct_dir``.
    """
    image_dir, paths = Path(image_dir), OutputPaths(Path(db_path))
    report = RunReport()
    names = list_images(image_dir)
    _check_inputs(config, names, reconstruct_dir)
    _check_outputs_options(config, names, reconstruct_dir, undistort_dir)
    budget = thread_budget(threads)
    if paths.database.exists() and not overwrite:
        raise DatabaseExistsError(f"{paths.database}: database exists; pass --overwrite to replace it")
    if paths.database.is_dir():
        raise DatabaseExistsError(f"{paths.database}: is a folder, not a database file")
    # Validate the descriptor (weights present) and the COLMAP version before touching any file.
    report.database_schema = schema_name(config.export.colmap_version)
    masks = masks_digest(config.images.mask_dir, names)
    feature_fp = _fingerprint(config, FEATURE_SECTIONS, masks)
    match_fp = _fingerprint(config, MATCH_SECTIONS, masks)
    torch.manual_seed(config.mapping.seed)
    np.random.seed(config.mapping.seed)

    report.images_found = len(names)
    for name, reason in scan_folder(image_dir)[1]:
        log.warning("skipped %s: %s", image_dir / name, reason)
        report.skipped.append((name, reason))
    hashes: dict[str, str] = {}
    duplicates = _same_content_groups(image_dir, names, hashes)
    for name, reason in duplicates.items():
        log.warning("skipped %s: %s", image_dir / name, reason)
        report.skipped.append((name, reason))
    candidates = [n for n in names if n not in duplicates]

    paths.config.write_text(config_to_toml(config, header=f"matcher configuration of {paths.database.name}"))
    t0 = time.perf_counter()
    with _open_cache(FeatureStore, paths.features, feature_fp, overwrite) as features:
        with _thread_limits(budget, explicit=threads is not None and threads > 0, record=report.threads):
            extract_all(image_dir, candidates, features, config, report, progress, content=hashes)
        if not report.images_used:
            raise NoImagesError(f"{image_dir}: no usable image ({len(report.skipped)} file(s) skipped, see above)")
        t1 = time.perf_counter()
        report.timings["extract"] = t1 - t0
        used = sorted(report.images_used)
        # Pairs are not in the match fingerprint: a pair's matches do not depend on which other pairs are matched.
        pairs = make_pairs(config.pairs, used, names, descriptors=lambda name: features.read(name).descriptors,
                           image_dir=image_dir)
        report.pairs = len(pairs)
        with _open_cache(MatchStore, paths.matches, match_fp, overwrite) as matches:
            match_all(pairs, features, matches, config, report, progress, threads=budget, content=hashes)
            report.threads["matching_workers"] = config.matching.workers if config.matching.workers > 0 else budget
            t2 = time.perf_counter()
            report.timings["match"] = t2 - t1
            legacy = is_legacy_version(config.export.colmap_version)
            report.database = (write_legacy_database if legacy else write_database)(
                paths.database,
                _database_images(image_dir, used, features),
                _database_pairs(pairs, matches, report),
                config.export,
            )
            report.timings["export"] = time.perf_counter() - t2
    if reconstruct_dir is not None:
        t3 = time.perf_counter()
        bar = progress_bar(total=len(used), enabled=progress, desc="map", unit="img", leave=False)
        mapping = config.mapping
        if mapping.num_threads <= 0:
            mapping = dataclasses.replace(mapping, num_threads=budget)
        report.threads["mapping"] = mapping.num_threads
        _, report.reconstruction = reconstruct(
            paths.database, image_dir, Path(reconstruct_dir), mapping, on_image=lambda: bar.update(1), text=text
        )
        bar.close()
        report.timings["map"] = time.perf_counter() - t3
        if undistort_dir is not None and report.reconstruction.registered_images > 0:
            t4 = time.perf_counter()
            report.undistorted = undistort(model_path(reconstruct_dir), image_dir, undistort_dir, text, budget)
            report.timings["undistort"] = time.perf_counter() - t4
    return report


def _check_outputs_options(
    config: PipelineConfig, names: list[str], reconstruct_dir: Path | None, undistort_dir: Path | None
) -> None:
    """Option errors found before anything is written (ConfigError)."""
    if undistort_dir is not None and reconstruct_dir is None:
        raise ConfigError("--undistort needs --reconstruct DIR (the model to undistort)")
    if undistort_dir is not None and Path(undistort_dir).exists() and not Path(undistort_dir).is_dir():
        raise ConfigError(f"{undistort_dir}: --undistort needs a folder, this is a file")
    if config.export.camera_params:
        camera_params(config.export.camera_model, config.export.camera_params)
    mask_dir = config.images.mask_dir
    if mask_dir:
        if not Path(mask_dir).is_dir():
            raise ConfigError(f"{mask_dir}: mask folder not found")
        if not any(mask_path(mask_dir, name).is_file() for name in names):
            log.warning("no mask in %s for any image (COLMAP's convention: the mask of a/b.jpg is %s)",
                        mask_dir, mask_path(mask_dir, "a/b.jpg"))


@contextmanager
def _thread_limits(budget: int, explicit: bool, record: dict[str, int]) -> Iterator[None]:
    """torch and OpenCV threads for a block: ``budget`` when asked for explicitly, else at most ``budget``
    (their own defaults may be lower: torch counts physical cores); restored afterwards. Recorded in ``record``."""
    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    torch_threads = budget if explicit else min(torch_before, budget)
    cv2_threads = budget if explicit or cv2_before <= 0 else min(cv2_before, budget)
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)
    record.update(budget=budget, torch=torch.get_num_threads(), opencv=cv2.getNumThreads())
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)
