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
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from matcher.colmap_db import camera_params
from matcher.colmap_legacy_db import schema_name
from matcher.config import PipelineConfig, config_to_toml, validate_config
from matcher.descriptors import check_weights
from matcher.descriptors.engines import resolve_engine
from matcher.errors import ConfigError, DatabaseExistsError, NoImagesError, StorageError
from matcher.images import list_images, scan_folder
from matcher.output_lock import OutputLock
from matcher.pairs import read_pairs_file
from matcher.progress import progress_bar
from matcher.mapping import ReconstructionSummary, model_path, reconstruct
from matcher.masks import mask_path
from matcher.on_demand import PairRetry, format_retries, match_on_demand
from matcher.stages import (
    FEATURE_SECTIONS, MATCH_SECTIONS, FeatureSettings, expand_pairs, export_database, extract_features, make_pairs,
    match_features,
)
from matcher.stages.cache import fingerprint
from matcher.threads import set_compute_threads, thread_budget
from matcher.undistortion import UndistortSummary, undistort

__all__ = ["OutputPaths", "RunReport", "run_match", "feature_settings", "FEATURE_SECTIONS", "MATCH_SECTIONS"]

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

    @property
    def views(self) -> Path:
        """The on-demand stage's file (``viewpoint.on_demand``), :func:`matcher.on_demand.views_path`."""
        return self.database.with_name(self.database.stem + ".views.h5")


@dataclass
class RunReport:
    """What a run did, for the end-of-run summary."""

    images_found: int = 0
    images_used: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_reused: int = 0
    pairs: int = 0
    pairs_added: list[int] = field(default_factory=list)  # verified-neighbour pairs per round (in ``pairs``)
    pairs_reused: int = 0
    pairs_without_matches: int = 0
    pairs_verified: int = 0
    database: dict[str, int] = field(default_factory=dict)
    database_schema: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    reconstruction: ReconstructionSummary | None = None
    undistorted: UndistortSummary | None = None
    threads: dict[str, int] = field(default_factory=dict)
    on_demand: list[PairRetry] = field(default_factory=list)

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
            f"pairs: {self.pairs} matched"
            + (f" ({' + '.join(map(str, self.pairs_added))} from verified neighbours)" if self.pairs_added else "")
            + f", {self.pairs_verified} verified, "
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
        if self.on_demand:
            lines.append(format_retries(self.on_demand))
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
    """:func:`matcher.stages.cache.fingerprint` of ``config``'s ``sections``."""
    return fingerprint({s: getattr(config, s) for s in sections}, masks)


def feature_settings(config: PipelineConfig) -> FeatureSettings:
    """The sections of ``config`` that extraction reads (:meth:`FeatureSettings.from_config`)."""
    return FeatureSettings.from_config(config)


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


def _check_inputs(config: PipelineConfig, names: list[str], reconstruct_dir: Path | None, ray: str | None) -> None:
    """Errors in the options and the files they name, found before anything is written."""
    validate_config(config)
    if reconstruct_dir is not None and Path(reconstruct_dir).exists() and not Path(reconstruct_dir).is_dir():
        raise ConfigError(f"{reconstruct_dir}: --reconstruct needs a folder, this is a file")
    if config.pairs.strategy == "file" and config.pairs.pairs_file:
        read_pairs_file(Path(config.pairs.pairs_file), names)
    if config.descriptor.name == "sdgmnet":
        check_weights(config.descriptor)  # bad types, NaN weights: ModelWeightsError before any write
    if ray:
        from matcher.distributed import require_ray

        require_ray()  # not installed: ConfigError naming the extra, before any write


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
    ray: str | None = None,
) -> RunReport:
    """Run the whole pipeline: the stages of :mod:`matcher.stages` in turn over the files of the module docstring.

    Args:
        reconstruct_dir: also run SfM; the models go to ``reconstruct_dir/0`` (the largest), ``/1``...
        progress: progress bars (drawn only when stderr is a terminal).
        undistort_dir: also undistort the largest model there (:mod:`matcher.undistortion`); needs ``reconstruct_dir``.
        text: write the models as COLMAP text files too.
        threads: thread budget (None: CPU affinity capped by ``OMP_NUM_THREADS``, :mod:`matcher.threads`).
        ray: extract and match on a Ray cluster at this address (``"auto"``: join or start a local one); the
            files and the database are the same as a local run's (:mod:`matcher.distributed`).

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
    _check_inputs(config, names, reconstruct_dir, ray)
    _check_outputs_options(config, names, reconstruct_dir, undistort_dir)
    budget = thread_budget(threads)
    if paths.database.exists() and not overwrite:
        raise DatabaseExistsError(f"{paths.database}: database exists; pass --overwrite to replace it")
    if paths.database.is_dir():
        raise DatabaseExistsError(f"{paths.database}: is a folder, not a database file")
    # Validate the descriptor (weights present) and the COLMAP version before touching any file.
    report.database_schema = schema_name(config.export.colmap_version)
    if _extraction_needs_torch(config):
        import torch  # noqa: F401
    torch = sys.modules.get("torch")  # no stage draws from torch's generator; seeded as before where torch runs
    if torch is not None:
        torch.manual_seed(config.mapping.seed)
    np.random.seed(config.mapping.seed)

    report.images_found = len(names)
    for name, reason in scan_folder(image_dir)[1]:
        log.warning("skipped %s: %s", image_dir / name, reason)
        report.skipped.append((name, reason))

    paths.config.write_text(config_to_toml(config, header=f"matcher configuration of {paths.database.name}"))
    t0 = time.perf_counter()
    with _thread_limits(budget, explicit=threads is not None and threads > 0, record=report.threads,
                        torch_needed=_extraction_needs_torch(config)):
        extracted = extract_features(image_dir, paths.features, names, feature_settings(config),
                                     overwrite=overwrite, progress=progress, ray=ray)
    report.images_used, report.images_reused = extracted.used, extracted.reused
    report.skipped.extend(extracted.skipped)
    if not report.images_used:
        raise NoImagesError(f"{image_dir}: no usable image ({len(report.skipped)} file(s) skipped, see above)")
    t1 = time.perf_counter()
    report.timings["extract"] = t1 - t0
    used = sorted(report.images_used)
    pairs = make_pairs(paths.features, config.pairs, names=used, image_dir=image_dir, all_names=names)
    report.pairs = len(pairs)
    matched = match_features(paths.features, pairs, paths.matches, config.matching, config.verification,
                             overwrite=overwrite, progress=progress, threads=budget, ray=ray)
    report.pairs_reused = matched.reused
    if config.pairs.retrieval_k > 0 and config.pairs.expand_rounds > 0:  # verified-neighbour pairs, matched
        expanded = expand_pairs(paths.features, pairs, paths.matches, config.pairs, config.matching,
                                config.verification, overwrite=overwrite, progress=progress, threads=budget, ray=ray)
        pairs, report.pairs_added = expanded.pairs, expanded.added
        report.pairs, report.pairs_reused = len(pairs), report.pairs_reused + expanded.reused
    report.threads["matching_workers"] = config.matching.workers if config.matching.workers > 0 else budget
    t2 = time.perf_counter()
    report.timings["match"] = t2 - t1
    if config.viewpoint.on_demand:  # failed pairs retried with view synthesis (matcher.on_demand)
        report.on_demand = match_on_demand(image_dir, paths.features, paths.matches, pairs, config, overwrite=overwrite)
        report.timings["on demand"], t2 = time.perf_counter() - t2, time.perf_counter()
    exported = export_database(image_dir, paths.features, paths.matches, pairs, paths.database, config.export,
                               names=used, overwrite=True,  # an existing database was refused above
                               views_path=paths.views if config.viewpoint.on_demand else None)
    report.database = exported.database
    report.pairs_without_matches, report.pairs_verified = exported.pairs_without_matches, exported.pairs_verified
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
def _thread_limits(budget: int, explicit: bool, record: dict[str, int], torch_needed: bool = True) -> Iterator[None]:
    """torch and OpenCV threads for a block: ``budget`` when asked for explicitly, else at most ``budget``
    (their own defaults may be lower: torch counts physical cores); restored afterwards. Recorded in ``record``.

    torch's setting is made only when ``torch_needed`` or torch is loaded already (a run on the OpenVINO engine
    never imports it); code without torch reads the number from :func:`matcher.threads.compute_threads`."""
    if torch_needed:
        import torch  # noqa: F401 (loaded here so that its threads are set for the block)
    torch = sys.modules.get("torch")
    cv2_before = cv2.getNumThreads()
    cv2_threads = budget if explicit or cv2_before <= 0 else min(cv2_before, budget)
    cv2.setNumThreads(cv2_threads)
    torch_before = torch.get_num_threads() if torch is not None else 0
    if torch is not None:
        torch.set_num_threads(budget if explicit else min(torch_before, budget))
    compute = torch.get_num_threads() if torch is not None else budget
    set_compute_threads(compute)
    record.update(budget=budget, torch=compute, opencv=cv2.getNumThreads())  # "torch": numerical threads
    try:
        yield
    finally:
        set_compute_threads(None)
        if torch is not None:
            torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)


def _extraction_needs_torch(config: PipelineConfig) -> bool:
    """Whether extraction runs torch: sdgmnet on the torch engine (configured, or OpenVINO not installed), or
    affine shapes (kornia). The OpenVINO engine and rootsift run without it."""
    if config.detection.affine:
        return True
    descriptor = config.descriptor
    return descriptor.name == "sdgmnet" and resolve_engine(descriptor.engine, descriptor.device) == "torch"

