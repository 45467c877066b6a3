"""matcher: feature matching for Structure-from-Motion (photos -> COLMAP database -> pycolmap model).

``import matcher`` is light: torch, pycolmap and OpenCV load on first use of an entry point.

    import matcher
    report = matcher.match("images/", "out/db.db", reconstruct="out/sparse")   # the `match` command
    summary = matcher.reconstruct("out/db.db", "images/", "out/sparse")        # `matcher reconstruct`
    matcher.undistort("out/sparse/0", "images/", "out/dense")                  # `--undistort`

The stages one at a time, over files (:mod:`matcher.stages`; ``match`` is their composition):

    config = matcher.load_config("default")
    matcher.extract_features("images/", "f.h5", settings=matcher.FeatureSettings.from_config(config))
    pairs = matcher.make_pairs("f.h5", config.pairs, image_dir="images/")
    matcher.match_features("f.h5", pairs, "m.h5", config.matching, config.verification)
    pairs = matcher.expand_pairs("f.h5", pairs, "m.h5", config.pairs, config.matching, config.verification).pairs
    matcher.export_database("images/", "f.h5", "m.h5", pairs, "db.db", config.export)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "__version__",
    "match",
    "reconstruct",
    "undistort",
    "load_config",
    "PipelineConfig",
    "MappingConfig",
    "MatcherError",
    "FeatureSettings",
    "extract_features",
    "make_pairs",
    "match_features",
    "expand_pairs",
    "export_database",
]

# name -> module that defines it (imported on first access, PEP 562)
_LAZY = {
    "match": "matcher.api",
    "reconstruct": "matcher.api",
    "undistort": "matcher.api",
    "load_config": "matcher.config",
    "PipelineConfig": "matcher.config",
    "MappingConfig": "matcher.config",
    "MatcherError": "matcher.errors",
    "FeatureSettings": "matcher.stages",
    "extract_features": "matcher.stages",
    "make_pairs": "matcher.stages",
    "match_features": "matcher.stages",
    "expand_pairs": "matcher.stages",
    "export_database": "matcher.stages",
}

if TYPE_CHECKING:
    from matcher.api import match, reconstruct, undistort
    from matcher.config import MappingConfig, PipelineConfig, load_config
    from matcher.errors import MatcherError
    from matcher.stages import (
        FeatureSettings, expand_pairs, export_database, extract_features, make_pairs, match_features,
    )

    __version__: str


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("matcher")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'matcher' has no attribute '{name}'")
    globals()[name] = value  # cache: later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

