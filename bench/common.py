"""Shared helpers of the bench scripts: thread settings, repeated timing, peak memory, machine notes, tables.

Timing
    :func:`time_call` runs a callable ``warmup`` times untimed, then ``repeat`` times, and keeps every wall-clock
    time (``time.perf_counter``). Scripts report the **median** and compare against a baseline (pycolmap) timed in
    the same process, interleaved with the thing under test, because the machine is shared and its load drifts.

Peak memory (what is measured, exactly)
    Resident set size (RSS) of the process as the Linux kernel counts it: every resident page, whether it belongs
    to Python objects, numpy/torch buffers, OpenCV, pycolmap/COLMAP's C++ heap, SQLite or HDF5 caches, or the
    mapped code of the shared libraries (torch alone maps ~300 MB). tracemalloc would miss all non-Python
    allocations, so it is not used.

    * :class:`PeakRSS` measures the peak **during one block of code**: it frees what it can first (``gc.collect``
      and glibc ``malloc_trim``), reads the current RSS, resets the kernel's high-water mark (``VmHWM``) by
      writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), runs the block, and reads ``VmHWM`` again.
      ``delta`` = peak during the block - RSS before it = the extra memory the block needed. Caveat: a block
      can reuse memory that an earlier block freed but the allocator kept, so deltas are lower bounds; run
      each block in a fresh process (:func:`run_in_child`) when that matters.
    * :func:`run_in_child` runs a function in a fresh ``spawn``-ed interpreter and returns its result; the
      function reports its own whole-life peak with :func:`peak_rss_mib` (``VmHWM``, equal to
      ``getrusage(RUSAGE_SELF).ru_maxrss``).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
MiB = 1024.0 * 1024.0


def shared_data() -> Path:
    """``$MATCHER_SHARED_DATA`` or ``../shared/data`` beside the repository (:mod:`matcher.shared_data`)."""
    from matcher.shared_data import shared_data_dir

    return shared_data_dir()


# ---------------------------------------------------------------------------------------------------- threads


def set_threads(n: int) -> None:
    """Use ``n`` threads in torch (intra-op), OpenCV, and in OpenMP/MKL of any child process."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


# ----------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall-clock times of repeated runs, in seconds."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    def add(self, seconds: float) -> None:
        self.values.append(seconds)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once: (its result, wall-clock seconds)."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def time_call(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> Timing:
    """``warmup`` untimed runs, then ``repeat`` timed runs."""
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeat):
        timing.add(timed(fn)[1])
    return timing


# ----------------------------------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    return _status_kib("VmRSS") / 1024.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process since start or the last :func:`reset_peak` (MiB)."""
    return _status_kib("VmHWM") / 1024.0


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel (glibc), so RSS shows live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """``with PeakRSS() as m: ...`` -> ``m.before``, ``m.peak`` (absolute, MiB), ``m.delta`` (peak - before)."""

    def __enter__(self) -> "PeakRSS":
        release_memory()
        self.before = rss_mib()
        if not reset_peak():
            raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs); per-block peaks need Linux >= 4.0")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = peak_rss_mib()
        self.delta = self.peak - self.before


def _child_entry(queue: "mp.Queue", fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        queue.put(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a fresh spawned interpreter; return its (picklable) result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_entry, args=(queue, fn, args, kwargs))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"child process failed: {payload}")
    return payload


# ---------------------------------------------------------------------------------------------------- reports


def machine_notes() -> str:
    """Date, ``lscpu | head -20``, load average, memory and library versions, as a Markdown block."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()[:20]
    except OSError:
        lscpu = ["lscpu not available"]
    lscpu = [line for line in lscpu if not line.startswith("Flags")]
    import cv2
    import kornia
    import numpy
    import pycolmap
    import torch

    try:
        mem_total = _meminfo_gib("MemTotal")
    except (OSError, RuntimeError):
        mem_total = float("nan")
    lines = [
        f"date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"code: {git_state()}",
        f"host: {platform.node()}  python {platform.python_version()}  RAM {mem_total:.1f} GiB",
        f"load average (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"torch {torch.__version__} (threads {torch.get_num_threads()}), kornia {kornia.__version__}, "
        f"opencv {cv2.__version__} (threads {cv2.getNumThreads()}), pycolmap {pycolmap.__version__}, numpy {numpy.__version__}",
        *lscpu,
    ]
    return "```\n" + "\n".join(lines) + "\n```"


def git_state() -> str:
    """Commit of the checkout and the files of matcher/ and pipelines/ that differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "matcher", "pipelines", "models").splitlines()]
    return f"commit {head}" + (f", uncommitted changes in: {', '.join(dirty)}" if dirty else ", matcher/ clean")


def _meminfo_gib(key: str) -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0 / 1024.0
    raise RuntimeError(key)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def markdown_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one character per column (l, r, c): the package's
    :func:`matcher.evaluation.report.markdown_grid`."""
    from matcher.evaluation.report import markdown_grid

    return markdown_grid(headers, rows, align, floatfmt="")


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000.0
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f}"


def fmt_mib(mib: float) -> str:
    return f"{mib:.0f}" if abs(mib) >= 10 else f"{mib:.1f}"
