"""How many threads a run may use: the CPUs this process may run on, capped by ``OMP_NUM_THREADS``.

``os.cpu_count()`` counts the machine's cores, not the ones a container, ``taskset`` or a batch scheduler gives
this process; ``os.sched_getaffinity`` does. ``OMP_NUM_THREADS`` is the usual way to ask a numerical program
for fewer threads (torch reads it too). ``--threads N`` (``threads=N`` in the Python API) overrides both.
"""

from __future__ import annotations

import os
import sys

__all__ = ["available_cpus", "thread_budget", "compute_threads", "set_compute_threads"]

_compute_threads: list[int] = []  # the budget a running pipeline set (set_compute_threads), for code without torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _omp_num_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows a per-level list
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n > 0 else None


def thread_budget(requested: int | None = None) -> int:
    """Threads to use: ``requested`` when it is positive, else the affinity CPUs capped by ``OMP_NUM_THREADS``."""
    if requested is not None and requested > 0:
        return int(requested)
    omp = _omp_num_threads()
    cpus = available_cpus()
    return min(cpus, omp) if omp else cpus


def set_compute_threads(threads: int | None) -> None:
    """Record the threads numerical work of this run may use (None: forget it); see :func:`compute_threads`."""
    _compute_threads[:] = [] if threads is None else [int(threads)]


def compute_threads() -> int:
    """Threads for numerical work (the OpenVINO engine, overlapped extraction): torch's setting when torch is
    loaded (the pipeline sets it to the run's budget), else the budget recorded by :func:`set_compute_threads`,
    else :func:`thread_budget`. Never imports torch."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    return _compute_threads[0] if _compute_threads else thread_budget()
