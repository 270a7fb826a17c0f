"""An exclusive lock file, so that two sync passes never run at once.

The daemon and a manual ``bookingsync sync`` take the same lock, in the same
state directory, whatever process they run in.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from bookingsync.errors import LockBusy


def open_locked(
    path: Path, wait_seconds: float, poll_seconds: float
) -> tuple[int, bool]:
    """Open ``path`` (mode 0600) and try to ``flock`` it for up to ``wait_seconds``.

    Returns the descriptor and whether the lock was taken. On failure the
    descriptor stays open so the caller can read who holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return fd, False
            time.sleep(poll_seconds)


class SyncLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_seconds``; raises ``LockBusy``."""
        fd, locked = open_locked(self.path, wait_seconds, poll_seconds=0.2)
        if not locked:
            holder = self._holder(fd)
            os.close(fd)
            raise LockBusy(holder)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _holder(fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode(errors="replace").strip()
        return text or "unknown process"

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
