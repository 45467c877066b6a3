"""The methods compared by ``matcher eval``, behind one interface.

Every method turns a folder of images into the same things: full-resolution keypoints per image (OpenCV pixel
convention), raw matches and verified inliers per requested pair, a COLMAP database and, if asked, a
reconstruction made by the same call to :func:`matcher.mapping.reconstruct` (pycolmap incremental mapping
with the same :class:`matcher.config.MappingConfig`). The metrics in :mod:`matcher.evaluation.run` then treat
all methods alike.

Methods:

* ``ours-default``, ``ours-sdgmnet``, ``ours-rootsift``, ``ours:<weights.pt>``: the real pipeline,
  :func:`matcher.pipeline.run_match` (DoG -> descriptor -> mutual NN + ratio test -> MAGSAC++ F/H -> database),
  keypoints and matches read back from the HDF5 files it writes. ``ours-default`` is the ``default`` preset as
  shipped (the compact SDGMNet, models/sdgmnet-half.pt, and its settings); ``ours-sdgmnet`` the ``sdgmnet`` preset
  (the full network, models/sdgmnet.pt); ``ours-rootsift`` the default preset with RootSIFT; ``ours:<file>`` the
  default preset with those weights. Each method's description names its preset, weights file and ratio.
* ``ours-viewpoint`` (only when named): the ``viewpoint`` preset (its SDGMNet weights, then matching on demand,
  :mod:`matcher.on_demand`); keypoints as the database holds them (view keypoints appended), pairs solved on
  demand with their on-demand matches.
* ``opencv-sift``: ``cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute`` on the same resized image
  (plain SIFT, L2-normalised; OpenCV's own keypoint selection by response, second orientations kept), then
  the pipeline's match-and-verify step (:func:`matcher.stages.match_pair`: mutual nearest neighbours, MAGSAC++)
  with the same settings, exported with :func:`matcher.colmap_db.write_database`.
* ``pycolmap-sift``: COLMAP's own pipeline, ``pycolmap.extract_features`` (``max_image_size`` = max_edge,
  ``max_num_features`` = max_keypoints, which COLMAP applies before adding second orientations, and its
  default upsampled first octave) + ``pycolmap.match_exhaustive`` (its defaults: ratio 0.8, cross-check,
  RANSAC 4 px at full resolution), read back with :func:`matcher.colmap_db.read_pairs`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import cv2
import numpy as np

from matcher.config import MIN_MAX_EDGE, PipelineConfig, Rule, at_least, check_settings, load_config, parse_override
from matcher.errors import ImageReadError
from matcher.images import list_images, read_image, resize_for_detection
from matcher.mapping import ReconstructionSummary, model_path

__all__ = [
    "EvalSettings",
    "PairResult",
    "MethodRun",
    "Method",
    "OursMethod",
    "OpenCVSiftMethod",
    "PycolmapSiftMethod",
    "METHOD_NAMES",
    "ON_REQUEST_METHODS",
    "build_methods",
    "colmap_sift_database",
]

log = logging.getLogger("matcher")

METHOD_NAMES = ("ours-rootsift", "ours-default", "ours-sdgmnet", "opencv-sift", "pycolmap-sift")
ON_REQUEST_METHODS = ("ours-viewpoint",)
"""Run only when named (``--methods``): the ``viewpoint`` preset (SDGMNet + matching on demand)."""


@dataclass
class EvalSettings:
    """What every method shares: detection image size, keypoint budget, mapping seed and threads; ``overrides``:
    ``"section.key=value"`` settings applied last to every pipeline configuration (``matcher eval --set``: the
    ``ours-*`` methods, opencv-sift's matching and verification, every method's mapping)."""

    max_edge: int = 1024
    max_keypoints: int = 4096
    seed: int = 0
    num_threads: int = -1
    overrides: list[str] = field(default_factory=list)

    rules: ClassVar[dict[str, Rule]] = {
        "max_edge": (lambda v: v == 0 or v >= MIN_MAX_EDGE, f"0 (full size) or at least {MIN_MAX_EDGE}"),
        "max_keypoints": at_least(1), "num_threads": (lambda v: v == -1 or v >= 1, "-1 (all cores) or at least 1"),
    }

    def __post_init__(self) -> None:
        check_settings(self, "eval")  # the pipeline configuration's checks: one ConfigError naming the value

    def pipeline_config(self, descriptor: str | None = "rootsift", weights: str | None = None,
                        preset: str = "default") -> PipelineConfig:
        """A preset (default: ``default``) with these settings (the config ``ours-*`` runs and ``opencv-sift`` reuses);
        ``descriptor`` / ``weights`` None: the preset's."""
        overrides: list[dict] = [
            {"images": {"max_edge": self.max_edge}},
            {"detection": {"max_keypoints": self.max_keypoints}},
            {"mapping": {"seed": self.seed, "num_threads": self.num_threads}},
        ]
        if descriptor is not None:
            overrides.append({"descriptor": {"name": descriptor}})
        if weights is not None:
            overrides.append({"descriptor": {"weights": str(weights)}})
        return load_config(preset, overrides + [parse_override(text) for text in self.overrides])


@dataclass
class PairResult:
    """Matches of one pair as the method produced them: (M, 2) indices and the (M,) verified-inlier mask."""

    matches: np.ndarray
    inliers: np.ndarray


@dataclass
class MethodRun:
    """What one method produced on one folder."""

    method: str
    database: Path
    keypoints: dict[str, np.ndarray]
    pairs: dict[tuple[str, str], PairResult]
    reconstruction_dir: Path | None = None
    reconstruction: ReconstructionSummary | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def matched_points(self, name1: str, name2: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy1 (M, 2), xy2 (M, 2), inliers (M,)) of a pair, in the order asked (empty if not matched)."""
        swapped = (name1, name2) not in self.pairs and (name2, name1) in self.pairs
        key = (name2, name1) if swapped else (name1, name2)
        result = self.pairs.get(key)
        if result is None or name1 not in self.keypoints or name2 not in self.keypoints or len(result.matches) == 0:
            return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool)
        m = result.matches[:, ::-1] if swapped else result.matches
        xy1 = self.keypoints[name1][m[:, 0]].astype(np.float64)
        xy2 = self.keypoints[name2][m[:, 1]].astype(np.float64)
        return xy1, xy2, result.inliers.astype(bool)


def _ordered(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted({(a, b) if a < b else (b, a) for a, b in pairs})


def _is_exhaustive(pairs: list[tuple[str, str]], names: list[str]) -> bool:
    n = len(names)
    return len(_ordered(pairs)) == n * (n - 1) // 2


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


class Method:
    """A comparator. ``run`` matches ``pairs`` of the images in ``image_dir`` (all of them go into the database)."""

    name = ""
    description = ""

    def run(
        self, image_dir: Path, pairs: list[tuple[str, str]], work_dir: Path, reconstruct: bool = False
    ) -> MethodRun:
        raise NotImplementedError


class _DropNonImageNotes(logging.Filter):
    """Evaluation folders hold ground truth beside the images (H_1_k, K.txt): no need to say so every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("not an image file")


def _describe(preset: str, config: PipelineConfig) -> str:
    """What an ``ours-*`` method runs: preset, detector budget, descriptor and weights file, matching, verification."""
    from matcher.descriptors import shipped_models

    descriptor = config.descriptor.name
    if descriptor == "sdgmnet":
        weights = config.descriptor.weights
        descriptor += f" (weights {f'models/{weights}.pt' if weights in shipped_models() else weights})"
    d = config.detection
    orientations = ("one orientation per location" if d.max_orientations == 1 or d.upright else
                    f"up to {d.max_orientations} orientations per location, similarity = max over them")
    return (
        f"matcher pipeline, preset {Path(preset).name}: DoG (OpenCV, contrast threshold {d.contrast_threshold:g}, "
        f"largest scales kept up to the budget, {orientations}) + {descriptor}, mutual NN + ratio "
        f"{config.matching.ratio:g}, MAGSAC++ F/H at {config.verification.threshold:g} px of the detection image"
        + (", then matching on demand with affine view synthesis for failed pairs (matcher.on_demand)"
           if config.viewpoint.on_demand else "")
    )


class OursMethod(Method):
    """The pipeline itself (:func:`matcher.pipeline.run_match`) with a preset, optionally another descriptor or
    weights (None: the preset's)."""

    def __init__(self, settings: EvalSettings, descriptor: str | None = "rootsift", weights: str | Path | None = None,
                 name: str | None = None, preset: str = "default") -> None:
        self.settings = settings
        self.descriptor = descriptor
        self.preset = preset
        self.weights = None if weights is None else str(weights)
        config = self.config()
        self.name = name or f"ours-{config.descriptor.name}"
        self.description = _describe(preset, config)

    def config(self) -> PipelineConfig:
        return self.settings.pipeline_config(self.descriptor, self.weights, self.preset)

    def config(self) -> PipelineConfig:
        return self.settings.pipeline_config(self.descriptor, self.weights, self.preset)

    def run(self, image_dir, pairs, work_dir, reconstruct=False):
        from contextlib import nullcontext

        from matcher.on_demand import pair_for_export, with_view_keypoints
        from matcher.pipeline import OutputPaths, run_match
        from matcher.storage import FeatureStore, MatchStore, ViewStore

        work_dir = _fresh(Path(work_dir))
        names = list_images(image_dir)
        config = self.config()
        if not _is_exhaustive(pairs, names):
            pairs_file = work_dir / "pairs.txt"
            pairs_file.write_text("".join(f"{a} {b}\n" for a, b in _ordered(pairs)))
            config.pairs.strategy, config.pairs.pairs_file = "file", str(pairs_file)
        db_path = work_dir / "database.db"
        rec_dir = work_dir / "sparse" if reconstruct else None
        quiet = _DropNonImageNotes()
        log.addFilter(quiet)
        try:
            report = run_match(Path(image_dir), db_path, config, overwrite=True, reconstruct_dir=rec_dir,
                               progress=False)
        finally:
            log.removeFilter(quiet)
        paths = OutputPaths(db_path)
        keypoints, results = {}, {}
        with FeatureStore(paths.features, "r") as features:
            for name in features.names():
                keypoints[name] = features.read_keypoints(name).astype(np.float64)
        views = ViewStore(paths.views, "r") if config.viewpoint.on_demand and paths.views.exists() else None
        with MatchStore(paths.matches, "r") as store, views or nullcontext():
            if views is not None:  # the images' keypoints as the database holds them, on-demand ones appended
                with FeatureStore(paths.features, "r") as features:
                    keypoints = {name: with_view_keypoints(name, features.read(name), views).keypoints.astype(
                        np.float64) for name in keypoints}
            for a, b in _ordered(pairs):
                if store.has(a, b):
                    pair = pair_for_export(a, b, store, views)
                    results[(a, b)] = PairResult(pair.matches.astype(np.int64), pair.inliers.astype(bool))
        timings = {"features+matching": sum(v for k, v in report.timings.items() if k != "map")}
        if "map" in report.timings:
            timings["mapping"] = report.timings["map"]
        model_dir = model_path(rec_dir) if rec_dir is not None else None
        return MethodRun(self.name, db_path, keypoints, results, model_dir, report.reconstruction, timings)


def _opencv_sift_features(image_dir: Path, names: list[str], settings: EvalSettings):
    from matcher.storage import ImageFeatures

    sift = cv2.SIFT_create(nfeatures=settings.max_keypoints)
    for name in names:
        try:
            image = read_image(image_dir, name)
        except ImageReadError as exc:
            log.warning("opencv-sift skipped %s", exc)
            continue
        small, sx, sy = resize_for_detection(image.gray, settings.max_edge)
        kps, desc = sift.detectAndCompute(small, None)
        if not kps or desc is None:
            continue
        xy = np.array([k.pt for k in kps], np.float64)
        xy = np.stack([(xy[:, 0] + 0.5) * sx - 0.5, (xy[:, 1] + 0.5) * sy - 0.5], axis=1)
        desc = desc.astype(np.float32)
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        yield name, ImageFeatures(
            keypoints=xy.astype(np.float32),
            scales=(np.array([k.size for k in kps], np.float32) / 2.0 * float(np.sqrt(sx * sy))),
            orientations=np.deg2rad(-np.array([k.angle for k in kps], np.float32)),
            scores=np.array([k.response for k in kps], np.float32),
            descriptors=desc,
            width=image.width,
            height=image.height,
        )


class OpenCVSiftMethod(Method):
    """OpenCV SIFT features, then the pipeline's matching, verification, export and mapping."""

    name = "opencv-sift"
    description = (
        "cv2.SIFT detectAndCompute (nfeatures = budget, strongest responses, second orientations kept), "
        f"plain SIFT descriptors (L2), then our mutual NN + ratio {PipelineConfig().matching.ratio:g} and MAGSAC++ F/H"
    )

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings

    def run(self, image_dir, pairs, work_dir, reconstruct=False):
        from matcher.colmap_db import DatabaseImage, write_database
        from matcher.mapping import reconstruct as run_mapping
        from matcher.stages import match_pair  # the pipeline's own match-and-verify step
        from matcher.storage import PairMatches

        work_dir = _fresh(Path(work_dir))
        image_dir = Path(image_dir)
        config = self.settings.pipeline_config("rootsift")
        t0 = time.perf_counter()
        features = dict(_opencv_sift_features(image_dir, list_images(image_dir), self.settings))
        stored: dict[tuple[str, str], PairMatches] = {}
        for a, b in _ordered(pairs):
            if a not in features or b not in features:
                continue
            stored[(a, b)] = match_pair(features[a], features[b], config.matching, config.verification,
                                        config.images.max_edge)
        db_path = work_dir / "database.db"
        write_database(
            db_path,
            (DatabaseImage(n, image_dir / n, f) for n, f in sorted(features.items())),
            ((a, b, p) for (a, b), p in stored.items()),
            config.export,
        )
        timings = {"features+matching": time.perf_counter() - t0}
        run = MethodRun(
            self.name, db_path, {n: f.keypoints.astype(np.float64) for n, f in features.items()},
            {k: PairResult(p.matches.astype(np.int64), p.inliers.astype(bool)) for k, p in stored.items()},
            timings=timings,
        )
        if reconstruct:
            t1 = time.perf_counter()
            _, run.reconstruction = run_mapping(db_path, image_dir, work_dir / "sparse", config.mapping)
            run.reconstruction_dir = model_path(work_dir / "sparse")
            timings["mapping"] = time.perf_counter() - t1
        return run


def colmap_sift_database(
    db_path: Path, image_dir: Path, max_edge: int, max_keypoints: int, num_threads: int = -1,
    image_names: list[str] | None = None, per_image_cameras: bool = True,
) -> dict[str, float]:
    """COLMAP's own pipeline into ``db_path`` through pycolmap, on the CPU: SIFT extraction (``max_image_size`` =
    ``max_edge`` unless 0, ``sift.max_num_features`` = ``max_keypoints``) and exhaustive matching with its default
    verification; one SIMPLE_RADIAL camera per image unless ``per_image_cameras`` is False (COLMAP's default
    grouping). The baseline of ``matcher eval`` and of bench/lund.py. Returns wall-clock seconds per stage
    (``extract``, ``match+verify``)."""
    import pycolmap

    from matcher.colmap_log import quiet_colmap

    extraction = pycolmap.FeatureExtractionOptions()
    if max_edge > 0:
        extraction.max_image_size = max_edge
    extraction.sift.max_num_features = max_keypoints
    extraction.num_threads = num_threads
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"  # as our export
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    mode = pycolmap.CameraMode.PER_IMAGE if per_image_cameras else pycolmap.CameraMode.AUTO
    with quiet_colmap():
        t0 = time.perf_counter()
        pycolmap.extract_features(db_path, image_dir, image_names=image_names or [], camera_mode=mode,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        t1 = time.perf_counter()
        pycolmap.match_exhaustive(db_path, matching_options=matching,
                                  verification_options=pycolmap.TwoViewGeometryOptions(), device=pycolmap.Device.cpu)
        t2 = time.perf_counter()
    return {"extract": t1 - t0, "match+verify": t2 - t1}


class PycolmapSiftMethod(Method):
    """COLMAP's own SIFT extraction and exhaustive matching + verification (pycolmap), then the same mapping."""

    name = "pycolmap-sift"
    description = (
        "pycolmap.extract_features (COLMAP SIFT, max_image_size = max edge, max_num_features = budget before "
        "second orientations, upsampled first octave) + pycolmap.match_exhaustive (ratio 0.8, cross-check, "
        "COLMAP's RANSAC 4 px at full resolution)"
    )

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings

    def run(self, image_dir, pairs, work_dir, reconstruct=False):
        from matcher.colmap_db import read_pairs
        from matcher.mapping import reconstruct as run_mapping

        work_dir = _fresh(Path(work_dir))
        image_dir = Path(image_dir)
        names = list_images(image_dir)
        db_path = work_dir / "database.db"
        stages = colmap_sift_database(db_path, image_dir, self.settings.max_edge, self.settings.max_keypoints,
                                      self.settings.num_threads, image_names=names)
        timings = {"features+matching": sum(stages.values())}
        keypoints, results = {}, {}
        for pair in read_pairs(db_path, _ordered(pairs)):
            keypoints[pair.name1], keypoints[pair.name2] = pair.keypoints1, pair.keypoints2
            results[(pair.name1, pair.name2)] = PairResult(pair.matches, pair.inliers)
        run = MethodRun(self.name, db_path, keypoints, results, timings=timings)
        if reconstruct:
            t1 = time.perf_counter()
            config = self.settings.pipeline_config()
            _, run.reconstruction = run_mapping(db_path, image_dir, work_dir / "sparse", config.mapping)
            run.reconstruction_dir = model_path(work_dir / "sparse")
            timings["mapping"] = time.perf_counter() - t1
        return run


_PRESET_METHODS = {"ours-default": "default", "ours-sdgmnet": "sdgmnet", "ours-viewpoint": "viewpoint"}
"""Methods that run a preset as shipped (its descriptor and weights), with the evaluation's shared settings."""


def build_methods(
    names: list[str] | None, weights: list[str | Path] | tuple = (), settings: EvalSettings | None = None
) -> tuple[list[Method], list[str]]:
    """Methods by name (None: all available), plus ``ours:<file>`` for each weights file.

    Returns (methods, notes): ``ours-default`` / ``ours-sdgmnet`` / ``ours-viewpoint`` are skipped with a note
    when their preset's weights do not ship in ``models/`` (pass the file with ``weights`` instead). Unknown names
    raise ConfigError; a missing weights file raises ModelWeightsError.
    """
    from matcher.descriptors import resolve_weights, shipped_models
    from matcher.errors import ConfigError

    settings = settings or EvalSettings()
    requested = list(METHOD_NAMES) if not names else list(dict.fromkeys(names))
    unknown = [n for n in requested if n not in METHOD_NAMES + ON_REQUEST_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHOD_NAMES + ON_REQUEST_METHODS)}")
    methods: list[Method] = []
    notes: list[str] = []
    for name in requested:
        if name == "ours-rootsift":
            methods.append(OursMethod(settings, "rootsift"))
        elif name in _PRESET_METHODS:
            preset = _PRESET_METHODS[name]
            config = load_config(preset)
            if config.descriptor.name != "sdgmnet" or config.descriptor.weights in shipped_models():
                methods.append(OursMethod(settings, None, name=name, preset=preset))
            else:
                notes.append(f"{name} skipped: the weights of the {preset} preset do not ship in models/ "
                             f"({config.descriptor.weights}.pt); pass --weights FILE to evaluate a weights file")
        elif name == "opencv-sift":
            methods.append(OpenCVSiftMethod(settings))
        elif name == "pycolmap-sift":
            methods.append(PycolmapSiftMethod(settings))
    for file in weights:
        path = resolve_weights(str(file))
        methods.append(OursMethod(settings, "sdgmnet", path, name=f"ours:{path.name}"))
    return methods, notes
