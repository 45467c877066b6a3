"""Overlap per-image work: decode and detection of the next image run while the network describes this one.

:func:`ordered_map` applies a function to items on a small thread pool and yields the results in input order,
at most ``ahead`` items in flight beyond the one being consumed. With two workers the OpenCV decode/detection
and kornia patch sampling of one image (which release the GIL) run beside the network of the other (OpenVINO
and torch release it too); memory stays bounded (``workers + ahead`` images).

Exceptions raised by ``fn`` are re-raised when their item's turn comes, so the caller sees them in order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ordered_map", "once", "extraction_workers"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2, ahead: int = 1) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with ``workers + ahead - 1`` results computed ahead.

    ``workers <= 1``: plain ``map`` in this thread (nothing overlapped). Stopping the iteration early (``close``
    or garbage collection of the generator) cancels what has not started and waits for what has.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    limit = workers + max(0, ahead) - 1
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="matcher-overlap") as pool:
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) > limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def once(build: Callable[[], R]) -> Callable[[], R]:
    """A thread-safe lazy value: ``build()`` runs at the first call only, later calls return its result."""
    lock = threading.Lock()
    box: list[R] = []

    def get() -> R:
        if not box:
            with lock:
                if not box:
                    box.append(build())
        return box[0]

    return get


def extraction_workers() -> int:
    """Images in flight at extraction: 2 when this run may use at least 2 threads (``--threads``, which sets
    torch's thread count, or :func:`matcher.threads.compute_threads` without torch), else 1 (nothing overlapped)."""
    from matcher.threads import compute_threads

    return 2 if compute_threads() >= 2 else 1
