"""The Python entry points the command line calls: :func:`match`, :func:`reconstruct`, :func:`undistort`.

Each takes paths and plain values, writes the same files as its command, and returns the summary the command
prints (``.format()``) or writes with ``--json`` (``dataclasses.asdict``). Errors a user can fix raise
:class:`matcher.errors.MatcherError` subclasses with a one-line message.

:func:`match` is the composition of the stages in :mod:`matcher.stages` (``extract_features``, ``make_pairs``,
``match_features``, ``expand_pairs``, ``export_database``, and :func:`reconstruct`), also reachable as ``matcher.<name>``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from matcher.config import MappingConfig, PipelineConfig, load_config
from matcher.mapping import ReconstructionSummary
from matcher.undistortion import UndistortSummary

if TYPE_CHECKING:
    from matcher.pipeline import RunReport

__all__ = ["match", "reconstruct", "undistort", "FeatureSettings", "extract_features", "make_pairs", "match_features",
           "expand_pairs", "export_database"]

_STAGES = ("FeatureSettings", "extract_features", "make_pairs", "match_features", "expand_pairs", "export_database")


def __getattr__(name: str) -> Any:
    """The stage functions of :mod:`matcher.stages`, imported on first use (they load torch and h5py)."""
    if name in _STAGES:
        from importlib import import_module

        return getattr(import_module("matcher.stages"), name)
    raise AttributeError(f"module 'matcher.api' has no attribute '{name}'")

Overrides = Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Mapping[str, Any]]]


def _config(config: str | Path | PipelineConfig, overrides: Overrides | None) -> PipelineConfig:
    if overrides is None:
        overrides = []
    elif isinstance(overrides, Mapping):
        overrides = [overrides]
    if isinstance(config, PipelineConfig):
        if not overrides:
            return config
        from matcher.config import _merge  # the config module's own merge, with its checks

        merged = copy.deepcopy(config)
        for override in overrides:
            _merge(merged, dict(override), "overrides")
        return merged
    return load_config(str(config), [dict(o) for o in overrides])


def match(
    images: str | Path,
    out: str | Path,
    config: str | Path | PipelineConfig = "default",
    overrides: Overrides | None = None,
    *,
    reconstruct: str | Path | None = None,
    undistort: str | Path | None = None,
    text: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = True,
    ray: str | None = None,
) -> RunReport:
    """``match IMAGES --out OUT``: features, matches and a COLMAP database, optionally SfM and undistortion.

    Args:
        images: the photo folder. out: the database to write (caches and ``.config.toml`` beside it).
        config: a preset name (``"default"``, ``"rootsift"``...), a TOML file, or a :class:`PipelineConfig`.
        overrides: ``{"section": {"key": value}}`` (or a list of them) applied on top, e.g.
            ``{"detection": {"max_keypoints": 8192}}``.
        reconstruct: SfM models to ``reconstruct/0`` (largest), ``/1``... undistort: undistorted images and
            PINHOLE model there (needs ``reconstruct``). text: COLMAP text models too.
        threads: thread budget (None: CPU affinity capped by ``OMP_NUM_THREADS``).
        progress: progress bars, drawn only when stderr is a terminal.
        ray: extract and match on a Ray cluster at this address (``"auto"``: join or start a local one;
            ``pip install "matcher[ray]"``); the same files and database as a local run.

    Returns:
        :class:`matcher.pipeline.RunReport` (``report.format(OutputPaths(out))`` is the CLI's summary).
    """
    from matcher.pipeline import run_match

    return run_match(
        Path(images), Path(out), _config(config, overrides), overwrite=overwrite,
        reconstruct_dir=None if reconstruct is None else Path(reconstruct), progress=progress,
        undistort_dir=None if undistort is None else Path(undistort), text=text, threads=threads, ray=ray,
    )


def reconstruct(
    database: str | Path,
    images: str | Path,
    out: str | Path,
    config: MappingConfig | None = None,
    *,
    text: bool = False,
    threads: int | None = None,
    on_image: Callable[[], None] | None = None,
) -> ReconstructionSummary:
    """``matcher reconstruct DB IMAGES OUT``: SfM on a COLMAP database; models in ``out/0`` (largest), ``out/1``...

    ``summary.registered_images == 0`` with ``summary.failure`` saying why when nothing registered.
    """
    import dataclasses

    from matcher.mapping import reconstruct as run_mapping
    from matcher.threads import thread_budget

    config = config or MappingConfig()
    if config.num_threads <= 0 or threads:
        config = dataclasses.replace(config, num_threads=thread_budget(threads))
    _, summary = run_mapping(Path(database), Path(images), Path(out), config, on_image=on_image, text=text)
    return summary


def undistort(
    model: str | Path, images: str | Path, out: str | Path, *, text: bool = False, threads: int | None = None
) -> UndistortSummary:
    """Undistorted images and PINHOLE model of ``model`` (a model folder, e.g. ``sparse/0``) in ``out``:
    ``out/images``, ``out/sparse`` (and ``out/sparse/0``), ``out/stereo`` (:mod:`matcher.undistortion`)."""
    from matcher.undistortion import undistort as run_undistort

    return run_undistort(Path(model), Path(images), Path(out), text=text, threads=threads)
