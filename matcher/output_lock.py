"""One writer per output: an advisory lock (``fcntl.flock``) on ``DB.lock`` beside the database.

The kernel releases a ``flock`` when its holder exits, however it exits (SIGKILL included), so a lock file
left by a dead run never blocks the next one: it is simply locked again. The holder writes its pid into the
file, so a refused run can name it. The file is removed on release, while still locked; a run that opened the
old file just before checks that the path still names the file it locked, and retries otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from matcher.errors import OutputBusyError, StorageError

try:
    import fcntl
except ImportError:  # not on Windows: runs are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputLock"]


class OutputLock:
    """``with OutputLock(db_path):`` holds ``db_path.lock``; raises OutputBusyError if another process holds it."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self.path = self.database.with_name(self.database.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        if fcntl is None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusyError(
                    f"another match is writing {self.database} (pid {holder}); wait for it to end or stop it"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its previous holder between our open and flock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, et: type | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
