"""Pipeline configuration: a dataclass of defaults per stage, merged with a TOML preset, merged with flags.

Order of precedence (last wins): the dataclass defaults below < the preset (``pipelines/NAME.toml`` or a
file) < single values given on the command line (``--set section.key=value`` or dedicated flags). The merged
configuration is written next to the outputs (``<db>.config.toml``) and can be passed back as a preset.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
import math
import typing
from typing import Any, Callable, ClassVar, Literal

from matcher.errors import ConfigError
from matcher.shipped import resolve_shipped, shipped_names

__all__ = [
    "ImagesConfig",
    "DetectionConfig",
    "PatchConfig",
    "DescriptorConfig",
    "PairsConfig",
    "MatchingConfig",
    "VerificationConfig",
    "ExportConfig",
    "MappingConfig",
    "ViewpointConfig",
    "PipelineConfig",
    "available_presets",
    "preset_path",
    "load_config",
    "config_to_toml",
    "parse_override",
    "validate_config",
    "check_settings",
    "MIN_MAX_EDGE",
]

Rule = tuple[Callable[[Any], bool], str]  # (test of a value, what it must be)
MIN_MAX_EDGE = 64  # smallest images.max_edge other than 0: below it DoG finds next to nothing


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low, f"at least {low}")


def _above(low: float) -> Rule:
    return (lambda v: v > low, f"greater than {low}")


def _within(low: float, high: float, open_ends: bool = False) -> Rule:
    if open_ends:
        return (lambda v: low < v < high, f"strictly between {low} and {high}")
    return (lambda v: low <= v <= high, f"between {low} and {high}")


def _one_of(*choices: Any) -> Rule:
    return (lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


#: the rule builders, for other settings classes checked by :func:`check_settings` (training runs).
at_least, above, within, one_of = _at_least, _above, _within, _one_of


def _colmap_version() -> Rule:
    def known(text: str) -> bool:
        from matcher.colmap_legacy_db import parse_colmap_version  # the one parser of versions

        try:
            parse_colmap_version(text)
        except ConfigError:
            return False
        return True

    return (known, "empty (the installed pycolmap's schema) or a COLMAP version from 3.0 on, e.g. 3.8 or 3.12")


def _camera_params() -> Rule:
    def numbers(text: str) -> bool:
        try:
            return text == "" or all(math.isfinite(float(v)) for v in text.split(","))
        except ValueError:
            return False

    return (numbers, "empty or comma-separated numbers, e.g. \"1500,800,533,0\" for SIMPLE_RADIAL's f,cx,cy,k")


def _camera_model() -> Rule:
    def known(name: str) -> bool:
        import pycolmap

        return name in pycolmap.CameraModelId.__members__ and name != "INVALID"

    return (known, "a COLMAP camera model (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, ...)")


def _tilts() -> Rule:
    def tilts(text: str) -> bool:
        try:
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            return False
        return bool(values) and all(math.isfinite(v) and 1.0 < v <= 32.0 for v in values)

    return (tilts, "comma-separated tilts above 1 and at most 32, e.g. \"2, 4, 8\"")


@dataclass
class ImagesConfig:
    """Image reading: detection runs on a copy whose longer edge is at most ``max_edge`` pixels (0: full size).

    ``mask_dir``: COLMAP's mask convention: the mask of ``IMAGES/a/b.jpg`` is ``MASKDIR/a/b.jpg.png``, the image's
    size; no keypoint is kept where it is 0 (an image without a mask file keeps all). Empty: no masks.
    """

    max_edge: int = 1600
    mask_dir: str = ""

    rules: ClassVar[dict[str, Rule]] = {"max_edge": (lambda v: v == 0 or v >= MIN_MAX_EDGE, f"0 (full size) or at least {MIN_MAX_EDGE}")}


@dataclass
class DetectionConfig:
    """DoG detector (OpenCV SIFT). See :mod:`matcher.detect`.

    ``selection``: which keypoints survive ``max_keypoints``: ``scale`` keeps the largest scales (COLMAP drops
    the finest octaves first), ``response`` the strongest DoG responses. ``contrast_threshold`` 0.02 is COLMAP's
    SIFT peak threshold (0.00667 per layer; OpenCV divides by the 3 layers); OpenCV's own default, 0.04, leaves
    much of a 4096 budget unused (docs/eval.md, "Why the defaults").
    ``affine``: estimate each keypoint's affine shape (Baumberg iteration, kornia's second-moment estimator) and
    re-estimate its orientation in the shape-normalised frame; patches are then sampled from the affine frame
    (matcher.affine_shape). Changes the descriptors of ``sdgmnet`` (patch-based), not of ``rootsift`` (OpenCV's).
    ``max_orientations``: orientations described per keypoint location. 1: one (OpenCV's first); 2 or more: also up
    to that many - 1 further orientation peaks SIFT found at the location (within 80 % of the highest), described
    as extra rows of the same keypoint; matching takes the similarity of two keypoints as the maximum over their
    orientations, so each location stays one keypoint (matcher.detect, matcher.matching). Not with ``upright``
    (no extra rows then) or ``affine``.
    """

    max_keypoints: int = 4096
    selection: Literal["scale", "response"] = "scale"
    upright: bool = False
    contrast_threshold: float = 0.02
    edge_threshold: float = 10.0
    n_octave_layers: int = 3
    sigma: float = 1.6
    affine: bool = False
    max_orientations: int = 1

    rules: ClassVar[dict[str, Rule]] = {
        "max_keypoints": _at_least(1), "max_orientations": _within(1, 4),
        "contrast_threshold": _at_least(0.0), "edge_threshold": _above(0.0), "n_octave_layers": _at_least(1),
        "sigma": _above(0.0), "affine": _one_of(True, False),
    }


@dataclass
class PatchConfig:
    """Patch sampling for a patch descriptor: half-width of a patch = ``magnification`` × the keypoint's DoG sigma
    (0: the magnification the model was trained with, from its weights file); ``patch_size``: side in pixels,
    which must be the model's input size (checked when the descriptor is built)."""

    magnification: float = 0.0
    patch_size: int = 32

    rules: ClassVar[dict[str, Rule]] = {
        "magnification": (lambda v: v >= 0.0, "0 (the model's own) or a positive number of sigmas"),
        "patch_size": _at_least(8),
    }


@dataclass
class DescriptorConfig:
    """Descriptor: ``rootsift`` or ``sdgmnet``.

    ``weights``: for sdgmnet, a weights file, or a name of a model shipped in ``models/`` (default ``sdgmnet``).
    ``batch_size``: patches per network call (256: the fastest here, in cache). ``precision``: ``auto`` (bfloat16
    where the processor has native bfloat16, else float32), ``fp32`` or ``bf16``; ``bf16 = true`` is the older
    spelling of ``precision = "bf16"``. ``engine``: ``auto`` (OpenVINO when installed, ``matcher[fast]``, else
    torch), ``torch`` or ``openvino``; ``device``: ``auto`` (CUDA or MPS where torch has them), ``cpu``, ``cuda``,
    ``mps``. See matcher.descriptors.engines.
    """

    name: Literal["rootsift", "sdgmnet"] = "sdgmnet"
    weights: str = "sdgmnet-half"  # the default preset's (pipelines/default.toml); the full network: "sdgmnet"
    batch_size: int = 256
    bf16: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    engine: Literal["auto", "torch", "openvino"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    rules: ClassVar[dict[str, Rule]] = {
        "weights": (bool, "a weights file or a shipped model name"), "batch_size": _at_least(1),
    }


@dataclass
class PairsConfig:
    """Which image pairs to match: ``exhaustive``, ``sequential`` (each image with the next ``overlap``
    images in name order), ``retrieval`` (each image with its ``retrieval_k`` most similar images by a VLAD of
    its own descriptors over a ``retrieval_words``-word codebook, see matcher.retrieval) or ``file``
    (``pairs_file``: one ``name1 name2`` per line). With ``sequential`` or ``file``, ``retrieval_k`` > 0 adds
    the retrieved pairs to the strategy's own (0: none). ``gps_k`` > 0 adds to any strategy's pairs each image
    with its ``gps_k`` nearest images by EXIF GPS position (images without GPS get none; see matcher.gps).
    With retrieval (``retrieval_k`` > 0), ``expand_rounds`` rounds of verified-neighbour pairs follow the
    matching (0: none): each image is also matched with at most ``retrieval_k`` neighbours of its neighbours
    (pairs verified with >= ``expand_min_inliers`` inliers) per round; see matcher.retrieval_expansion."""

    strategy: Literal["exhaustive", "sequential", "retrieval", "file"] = "exhaustive"
    overlap: int = 10
    pairs_file: str = ""
    retrieval_k: int = 0
    retrieval_words: int = 64
    gps_k: int = 0
    expand_rounds: int = 1
    expand_min_inliers: int = 50

    rules: ClassVar[dict[str, Rule]] = {
        "overlap": _at_least(1),
        "retrieval_k": _at_least(0), "retrieval_words": _at_least(1), "gps_k": _at_least(0),
        "expand_rounds": _at_least(0), "expand_min_inliers": _at_least(1),
    }


@dataclass
class MatchingConfig:
    """Mutual nearest neighbours on L2 distance, optionally with Lowe's ratio test (``ratio`` = 0: off).

    The default 0.8 is COLMAP's; the test removes most matches between unrelated images (measured: docs/eval.md,
    "Why the defaults"). ``block_size``: rows of the similarity matrix computed at a time (bounds memory).
    ``threads``: torch threads while matching (0: leave as is); the default, one thread and blocks of 256, is the
    fastest measured (bench/RESULTS.md, "Figures behind the defaults"): the small reductions wait on a second
    thread.
    ``precision``: dtype of the product that proposes candidates (``auto``: bfloat16 where the processor has
    native bfloat16, else float32); decisions always use float32 similarities (see matcher.matching).
    ``workers``: pairs matched and verified at once, each in its own thread with ``threads`` torch threads
    (0: one per CPU core); the results do not depend on it.
    ``engine``: ``torch``, or ``numpy`` (float32 products by OpenCV, no torch); ``auto``: ``numpy`` for features
    described by the OpenVINO engine (a run that never imports torch) unless ``precision = "bf16"``, else
    ``torch`` (matcher.matching.resolve_matching_engine)."""

    ratio: float = 0.8
    block_size: int = 256
    threads: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    workers: int = 0
    engine: Literal["auto", "torch", "numpy"] = "auto"

    rules: ClassVar[dict[str, Rule]] = {
        "ratio": _within(0.0, 1.0), "block_size": _at_least(1), "threads": _at_least(0),
        "workers": _at_least(0),
    }


@dataclass
class VerificationConfig:
    """RANSAC per pair with OpenCV's USAC MAGSAC++.

    ``threshold``: inlier threshold in pixels of the resized detection image (scaled to full resolution).
    A pair is labelled planar (COLMAP's PLANAR_OR_PANORAMIC) when a homography explains at least
    ``homography_ratio`` of the fundamental matrix's inliers (planar scenes, pure rotation). Pairs with fewer
    than ``min_inliers`` inliers keep their raw matches but get no verified geometry.
    """

    threshold: float = 1.0
    confidence: float = 0.9999
    max_iterations: int = 10000
    min_inliers: int = 15
    homography_ratio: float = 0.8

    rules: ClassVar[dict[str, Rule]] = {
        "threshold": _above(0.0), "confidence": _within(0.0, 1.0, open_ends=True), "max_iterations": _at_least(1),
        "min_inliers": _at_least(8), "homography_ratio": _within(0.0, 1.0),
    }


@dataclass
class ExportConfig:
    """COLMAP database export: camera model, and whether all images share one camera.

    ``camera_params``: known intrinsics for every camera, COLMAP's ImageReader string for ``camera_model``
    (SIMPLE_RADIAL: ``"f,cx,cy,k"``, PINHOLE: ``"fx,fy,cx,cy"``, OPENCV: ``"fx,fy,cx,cy,k1,k2,p1,p2"``), in pixels
    of the full image, COLMAP's convention (top-left pixel centre at 0.5); the focal length is then a flagged
    prior (``has_prior_focal_length``). Empty: EXIF or COLMAP's guess.

    ``colmap_version``: the COLMAP that will read the database, e.g. ``"3.8"``: before 3.12 the database is
    written in COLMAP 3.8's schema (matcher.colmap_legacy_db), which COLMAP 3.x reads; empty: the schema of the
    installed pycolmap (COLMAP >= 3.12).
    """

    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = False
    camera_params: str = ""

    colmap_version: str = ""

    rules: ClassVar[dict[str, Rule]] = {
        "camera_model": _camera_model(), "colmap_version": _colmap_version(), "camera_params": _camera_params(),
    }


@dataclass
class MappingConfig:
    """SfM with pycolmap. ``num_threads`` -1: all cores. ``seed`` fixes COLMAP's RNG.

    ``mapper``: ``incremental`` (``pycolmap.incremental_mapping``) or ``global`` (``pycolmap.global_mapping``,
    GLOMAP). Incremental mapping starts from a pair with a wide triangulation angle and not too much forward
    motion (``init_min_tri_angle`` degrees, ``init_max_forward_motion``, COLMAP's defaults 16 and 0.95); a
    capture walking straight ahead (the Lund street of ../shared/data) offers no such pair, and global mapping
    registers all of it. ``refine_intrinsics`` false keeps every camera's focal length, principal point and
    distortion as the database gives them (COLMAP's ``--Mapper.ba_refine_focal_length 0`` and its siblings), for
    known intrinsics (``export.camera_params``).
    """

    mapper: Literal["incremental", "global"] = "incremental"
    num_threads: int = -1
    seed: int = 0
    min_model_size: int = 3
    min_num_matches: int = 15
    init_min_tri_angle: float = 16.0
    init_max_forward_motion: float = 0.95

    rules: ClassVar[dict[str, Rule]] = {
        "num_threads": (lambda v: v == -1 or v >= 1, "-1 (all cores) or at least 1"),
        "min_model_size": _at_least(1), "min_num_matches": _at_least(1), "init_min_tri_angle": _above(0.0),
        "init_max_forward_motion": _within(0.0, 1.0),
    }
    refine_intrinsics: bool = True


@dataclass
class ViewpointConfig:
    """Matching on demand with affine view synthesis (matcher.on_demand; the ``viewpoint`` preset switches it on).

    ``on_demand``: after the normal pass, retry unverified pairs of weakly connected images (fewer than
    ``retry_below`` verified pairs; at most ``max_retries_per_image`` pairs each, most raw matches first) with
    keypoints of simulated views, one step per tilt of ``tilts`` (comma-separated, in order), longitudes every
    ``rotation_step / t`` degrees, ``view_keypoints`` per view; the first step that verifies with at least
    ``retry_inliers`` inliers that are at least ``min_inlier_ratio`` of its matches is kept (pairs the normal pass
    verified with fewer than ``retry_inliers`` count as failed).
    ``spatial_px``: the ratio test's second neighbour is the nearest one farther than this (detection-image
    pixels) from the first.
    """

    on_demand: bool = False
    tilts: str = "2, 4, 8"
    rotation_step: float = 72.0
    view_keypoints: int = 1024
    retry_below: int = 2
    max_retries_per_image: int = 4
    retry_inliers: int = 30
    min_inlier_ratio: float = 0.25
    spatial_px: float = 10.0

    rules: ClassVar[dict[str, Rule]] = {
        "on_demand": _one_of(True, False), "tilts": _tilts(), "rotation_step": _within(1.0, 180.0),
        "view_keypoints": _at_least(1), "retry_below": _at_least(1), "max_retries_per_image": _at_least(1),
        "retry_inliers": _at_least(8), "min_inlier_ratio": _within(0.0, 1.0), "spatial_px": _at_least(0.0),
    }


@dataclass
class PipelineConfig:
    """All stages' settings, one section each (the sections of a preset file)."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    viewpoint: ViewpointConfig = field(default_factory=ViewpointConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(PipelineConfig)}  # type: ignore[misc]


def available_presets() -> list[str]:
    """Names of the presets shipped in ``pipelines/``."""
    return shipped_names("matcher._pipelines", ".toml")


def preset_path(name_or_file: str) -> Path:
    """Resolve a preset name (``default``) or a TOML file path."""
    return resolve_shipped(name_or_file, "matcher._pipelines", ".toml", ("pipeline preset", "preset"), ConfigError)


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
    elif kind is int and not isinstance(value, bool):
        try:
            if float(value) == int(float(value)):
                return int(float(value))
        except (TypeError, ValueError):
            pass
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind is str:
        return str(value)
    raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}")


def _merge(config: PipelineConfig, values: dict[str, Any], origin: str) -> None:
    sections = _sections()
    for section, entries in values.items():
        if section not in sections:
            raise ConfigError(f"{origin}: unknown section [{section}]; known: {', '.join(sections)}")
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        target = getattr(config, section)
        known = {f.name for f in dataclasses.fields(target)}
        for key, value in entries.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown key {section}.{key}; known: {', '.join(sorted(known))}")
            setattr(target, key, _coerce(section, key, value, getattr(target, key)))


def parse_override(text: str) -> dict[str, dict[str, Any]]:
    """``"section.key=value"`` -> ``{section: {key: value}}`` (the value is coerced later)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got '{text}'")
    lhs, value = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    return {section: {key: value.strip()}}


def load_config(
    preset: str = "default", overrides: list[dict[str, dict[str, Any]]] | None = None
) -> PipelineConfig:
    """Defaults < preset < overrides (applied in order)."""
    config = PipelineConfig()
    path = preset_path(preset)
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    values.pop("meta", None)
    _merge(config, values, str(path))
    for override in overrides or []:
        _merge(config, override, "command line")
    validate_config(config)
    return config


def validate_config(config: PipelineConfig) -> None:
    """Check every value of every section with :func:`check_settings` (one ConfigError naming the key).

    Called when a configuration is loaded and again by :func:`matcher.pipeline.run_match`, before anything
    is written.
    """
    for section in dataclasses.fields(config):
        check_settings(getattr(config, section.name), section.name)
    if config.pairs.strategy == "retrieval" and config.pairs.retrieval_k < 1:
        raise ConfigError("pairs.strategy = 'retrieval' needs pairs.retrieval_k >= 1 (--retrieval K)")
    if config.detection.affine and config.detection.max_orientations > 1:
        raise ConfigError("detection.max_orientations > 1 does not work with detection.affine = true (affine shapes "
                          "re-estimate one orientation per keypoint); set one of them back")


def check_settings(values: Any, prefix: str = "") -> None:
    """Check one settings dataclass (a pipeline section, a training run, ...) before any work: each field's
    type from its annotation (``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` choices, ``list[str]``,
    ``dict``), floats finite (``nan`` would silently switch comparisons off), then the class's ``rules``.

    Raises:
        ConfigError: one line, ``<prefix>.<key> = <value>: <what it must be>``.
    """
    rules: dict[str, Rule] = getattr(type(values), "rules", {})
    hints = typing.get_type_hints(type(values))
    for item in dataclasses.fields(values):
        value = getattr(values, item.name)
        where = f"{prefix + '.' if prefix else ''}{item.name} = {value!r}"
        problem = _type_problem(hints[item.name], value)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if item.name in rules:
            test, text = rules[item.name]
            if not test(value):
                raise ConfigError(f"{where}: must be {text}")


def _type_problem(kind: Any, value: Any) -> str:
    """What is wrong with ``value`` for the annotation ``kind`` ("" if nothing)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return "" if value in args and type(value) is type(args[0]) else "must be one of " + ", ".join(map(str, args))
    if kind is bool or kind is str:
        return "" if isinstance(value, kind) else f"expected {kind.__name__}"
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
        if kind is int and not isinstance(value, int):
            return "expected a whole number"
        return "" if math.isfinite(value) else "must be a finite number"
    if origin is list:
        item = args[0] if args else Any
        if not isinstance(value, list):
            return "expected a list"
        return next((f"item {v!r}: {p}" for v in value if item is not Any and (p := _type_problem(item, v))), "")
    if origin is dict or kind is dict:
        return "" if isinstance(value, dict) else "expected a table"
    return ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def config_to_toml(config: PipelineConfig, header: str = "") -> str:
    """Serialise to TOML that :func:`load_config` reads back to an equal config."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for section, entries in config.to_dict().items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in entries.items())
    return "\n".join(lines).lstrip("\n") + "\n"
