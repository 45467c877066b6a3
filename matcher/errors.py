"""User-facing failures: one exception type per kind, each printed by the CLI as one line.

Anything that is not one of these is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "MatcherError",
    "ImageReadError",
    "NoImagesError",
    "ConfigError",
    "DatabaseExistsError",
    "IncompatibleDatabaseError",
    "PairsFileError",
    "ModelWeightsError",
    "StorageError",
    "OutputBusyError",
]


class MatcherError(Exception):
    """Base class of the errors a user can cause and fix."""

    exit_code = 1


class ImageReadError(MatcherError):
    """An image file cannot be decoded, is empty, truncated, or unusable (too small, no keypoints)."""


class NoImagesError(MatcherError):
    """The image folder is missing or holds no image."""

    exit_code = 2


class ConfigError(MatcherError):
    """A preset, a configuration file or an option value is invalid."""

    exit_code = 2


class DatabaseExistsError(MatcherError):
    """The output database exists and neither --overwrite nor an append mode was asked for."""

    exit_code = 2


class IncompatibleDatabaseError(MatcherError):
    """An existing database or feature file does not fit this run (other images, other descriptor)."""

    exit_code = 2


class PairsFileError(MatcherError):
    """A pairs file cannot be read or names an image that is not in the folder."""

    exit_code = 2


class ModelWeightsError(MatcherError):
    """A descriptor weights file is missing or does not fit the network."""

    exit_code = 2


class StorageError(MatcherError):
    """A file cannot be written or read back (disk full, file-size limit, I/O error, permissions, damaged cache).

    Caches are left consistent: a rerun once the cause is fixed resumes where the failed run stopped.
    """

    exit_code = 1


class OutputBusyError(MatcherError):
    """Another ``match`` is writing the same database."""

    exit_code = 2


class ClusterError(MatcherError):
    """``--ray``: a task failed beyond its retries (its workers kept dying) or the cluster was lost.

    Results already written are kept: a rerun resumes, with or without ``--ray``.
    """

    exit_code = 1
