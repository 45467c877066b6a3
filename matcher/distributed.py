"""Extraction and matching as Ray tasks (``--ray ADDRESS``, ``pip install "matcher[ray]"``).

Images go to the cluster in batches (at most ``EXTRACT_BATCH`` per task), pairs too (at most ``MATCH_BATCH`` per
task, with the features of the batch's images as arguments: workers never open the HDF5 files); batches are
smaller when a run has few items, so every CPU of the cluster gets work. Results come back to the
calling process in submission order and are written there, by :func:`matcher.stages.extract_features` and
:func:`matcher.stages.match_features`, exactly as a local run writes them: resume, fingerprints and the
database do not depend on where the work ran. At most ``2 x`` the cluster's CPUs batches are in flight, so the
driver's memory does not grow with the collection. A task whose worker dies (killed, out of memory, a lost node)
is run again, up to ``MAX_RETRIES`` times (Ray's ``max_retries``); an exception raised by the task itself is not
retried and ends the run with its message.

Each task runs with one torch and one OpenCV thread (Ray gives a task one CPU); a worker process keeps the
descriptor it built (the network is loaded once per worker and settings, not once per batch). Mapping stays on
the driver. Every node needs this package installed (the same version) and the images at the same path.

``address``: ``"auto"`` joins the cluster this machine belongs to (``RAY_ADDRESS``, or the latest ``ray start``)
or, without one, starts a local cluster; anything else is passed to ``ray.init(address=...)``
(e.g. ``ray://head:10001`` or ``head:6379``). A Ray already initialised in the process is used as it is.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from matcher.config import MatchingConfig, VerificationConfig
from matcher.errors import ClusterError, ConfigError
from matcher.storage import ImageFeatures, PairMatches

__all__ = ["EXTRACT_BATCH", "MATCH_BATCH", "MAX_RETRIES", "require_ray", "connect", "extract_on_ray", "match_on_ray"]

EXTRACT_BATCH = 4
MATCH_BATCH = 16
MAX_RETRIES = 3
MISSING = 'Ray is not installed; --ray needs the extra: pip install "matcher[ray]"'
# Tests only: a folder; the first task of each stage to find no marker file there writes it and kills its own worker.
FAULT_ENV = "MATCHER_RAY_KILL_ONCE"


def require_ray() -> Any:
    """The ``ray`` module, or ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING) from None
    return ray


def connect(address: str) -> Any:
    """Join (or, for ``"auto"`` without a cluster, start) the Ray cluster at ``address``; returns ``ray``."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, logging_level="WARNING",
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--ray {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})") from None
    return ray


def _in_flight(ray: Any) -> int:
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _result(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``; an exception the task raised comes back as itself (one line for a MatcherError), a task
    lost beyond its retries as ClusterError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise
    except ray.exceptions.RayError as exc:  # worker crashed MAX_RETRIES + 1 times, node or cluster lost
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"Ray task failed after {MAX_RETRIES} retries ({reason}); rerun to resume") from None


def _ordered(ray: Any, refs: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
    """(key, ObjectRef) -> (key, result), in the order given, with a bounded number in flight."""
    limit = _in_flight(ray)
    pending: deque[tuple[Any, Any]] = deque()
    try:
        for item in refs:
            pending.append(item)
            if len(pending) >= limit:
                key, ref = pending.popleft()
                yield key, _result(ray, ref)
        while pending:
            key, ref = pending.popleft()
            yield key, _result(ray, ref)
    finally:
        for _, ref in pending:  # the run stopped early (an error): do not leave tasks running
            ray.cancel(ref, force=False)


def _batches(ray: Any, items: Sequence[Any], largest: int) -> Iterator[list[Any]]:
    """Consecutive batches of at most ``largest`` items, smaller when there are few items, so that every CPU
    of the cluster gets about two batches."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = max(1, min(largest, math.ceil(len(items) / (2 * cpus))))
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _one_thread() -> None:
    import warnings

    import cv2
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # Arrays from Ray's object store are read-only views; torch.from_numpy warns, and nothing writes to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _kill_once(stage: str) -> None:
    """Tests: the first task of ``stage`` kills its own worker process (see FAULT_ENV)."""
    folder = os.environ.get(FAULT_ENV, "")
    if not folder:
        return
    try:
        marker = os.open(Path(folder) / stage, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(marker, str(os.getpid()).encode())
    os.close(marker)
    os._exit(1)


def _absolute_paths(settings: Any) -> Any:
    """``settings`` with a relative weights file and mask folder made absolute (workers run elsewhere)."""
    descriptor, images = settings.descriptor, settings.images
    if Path(descriptor.weights).exists():
        descriptor = dataclasses.replace(descriptor, weights=str(Path(descriptor.weights).resolve()))
    if images.mask_dir:
        images = dataclasses.replace(images, mask_dir=str(Path(images.mask_dir).resolve()))
    return dataclasses.replace(settings, descriptor=descriptor, images=images)


_worker_descriptor: dict[str, Any] = {}  # per worker process: settings -> descriptor


def _extract_task(image_dir: Path, names: list[str], settings: Any) -> list[ImageFeatures | str]:
    from matcher.descriptors import build_descriptor
    from matcher.stages.extract import extract_batch

    _one_thread()
    _kill_once("extract")
    key = repr((settings.descriptor, settings.patches))

    def descriptor() -> Any:
        if key not in _worker_descriptor:
            _worker_descriptor.clear()
            _worker_descriptor[key] = build_descriptor(settings.descriptor, settings.patches)
        return _worker_descriptor[key]

    return extract_batch(image_dir, names, settings, descriptor)


def _match_task(
    pairs: list[tuple[str, str]], features: dict[str, ImageFeatures], matching: MatchingConfig,
    verification: VerificationConfig, max_edge: int,
) -> list[PairMatches]:
    from matcher.stages.match import match_pair

    _one_thread()
    _kill_once("match")
    return [match_pair(features[a], features[b], matching, verification, max_edge) for a, b in pairs]


def extract_on_ray(
    address: str, image_dir: Path, names: Sequence[str], settings: Any
) -> Iterator[tuple[str, ImageFeatures | str]]:
    """(name, features or the skip message) for ``names``, in order, extracted on the cluster in batches."""
    if not names:
        return
    ray = connect(address)
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_extract_task)
    settings = _absolute_paths(settings)
    image_dir = Path(image_dir).resolve()
    refs = ((batch, task.remote(image_dir, batch, settings)) for batch in _batches(ray, names, EXTRACT_BATCH))
    for batch, results in _ordered(ray, refs):
        yield from zip(batch, results)


def match_on_ray(
    address: str, pairs: Sequence[tuple[str, str]], features: Any, matching: MatchingConfig,
    verification: VerificationConfig, max_edge: int,
) -> Iterator[tuple[tuple[str, str], PairMatches]]:
    """((name1, name2), verified matches) for ``pairs``, in order, matched on the cluster in batches.

    ``features``: has ``get(name) -> ImageFeatures`` (:class:`matcher.stages.match.FeatureCache`); each batch is
    sent the features of its own images.
    """
    if not pairs:
        return
    ray = connect(address)
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_match_task)

    def submit() -> Iterator[tuple[list[tuple[str, str]], Any]]:
        for batch in _batches(ray, pairs, MATCH_BATCH):
            needed = {name: features.get(name) for pair in batch for name in pair}
            yield batch, task.remote(batch, needed, matching, verification, max_edge)

    for batch, results in _ordered(ray, submit()):
        yield from zip(batch, results)
