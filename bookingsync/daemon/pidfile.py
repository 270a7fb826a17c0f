"""The daemon's pid file, and sending it a signal from another process.

The running daemon holds an exclusive ``flock`` on its pid file. A pid file
whose lock no process holds is left over from a crash, so ``bookingsync
trigger`` never signals a process that merely reused the pid.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bookingsync.app import lock_path
from bookingsync.daemon.lock import open_locked
from bookingsync.errors import BookingSyncError
from bookingsync.settings import Settings

SYSTEMD_UNIT = "bookingsync"
# A `bookingsync trigger` holds a shared lock on the pid file for an instant.
# The daemon retries for this long before it concludes that another daemon runs.
ACQUIRE_WAIT_SECONDS = 1.0


def pid_path(settings: Settings) -> Path:
    """Return the pid file, beside the sync lock file in the state directory."""
    return lock_path(settings).with_suffix(".pid")


class DaemonRunning(BookingSyncError):
    """Another daemon already holds the pid file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another bookingsync daemon ({holder}) already runs on this state: "
            f"it holds {path}; stop it first"
        )


class PidFile:
    """The pid file of the running daemon, locked while the daemon lives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = ACQUIRE_WAIT_SECONDS) -> None:
        """Lock the file and write this process's pid into it.

        Raises ``DaemonRunning`` when another daemon holds the lock.
        """
        fd, locked = open_locked(self.path, wait_seconds, poll_seconds=0.05)
        if not locked:
            pid = _parse_pid(os.pread(fd, 32, 0))
            os.close(fd)
            raise DaemonRunning(self.path, pid)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the file, then drop the lock."""
        if self._fd is None:
            return
        # Unlink first, so that a reader that opens the path after this finds
        # no file instead of an unlocked one.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


@dataclass(frozen=True)
class TriggerResult:
    """Whether the signal reached the daemon, with a message for the admin."""

    delivered: bool
    message: str


def trigger_daemon(path: Path, signum: int = signal.SIGUSR1) -> TriggerResult:
    """Send ``signum`` to the running daemon and report whether it arrived.

    The daemon is found through its pid file, or through systemd's MainPID
    of the bookingsync unit when the pid file is missing.
    """
    try:
        pid, where = _find_daemon(path)
    except PermissionError:
        return TriggerResult(
            False,
            f"permission denied reading {path}: run this as the daemon's user "
            "(sudo -u bookingsync) or as root",
        )
    if pid is None:
        return TriggerResult(False, f"no running daemon found ({where})")
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return TriggerResult(
            False, f"no running daemon found (pid {pid} from {where} has exited)"
        )
    except PermissionError:
        return TriggerResult(
            False,
            f"permission denied signalling pid {pid}: run this as the daemon's "
            "user (sudo -u bookingsync) or as root",
        )
    name = signal.Signals(signum).name
    return TriggerResult(True, f"{name} sent to the daemon, pid {pid} ({where})")


def _find_daemon(path: Path) -> tuple[int | None, str]:
    """Return the daemon's pid (None when none runs) and the source of that pid."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _systemd_main_pid(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _parse_pid(os.pread(fd, 32, 0))
            return pid, f"pid file {path}"
        # No process holds the lock, so the daemon that wrote the file has died.
        return None, f"the pid file {path} is left over from a stopped daemon"
    finally:
        os.close(fd)


def _systemd_main_pid(path: Path) -> tuple[int | None, str]:
    systemctl = shutil.which("systemctl")
    no_file = f"no pid file at {path}"
    if systemctl is None:
        return None, no_file
    try:
        result = subprocess.run(
            [systemctl, "show", "--property=MainPID", "--value", SYSTEMD_UNIT],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{no_file}, and systemctl failed: {exc}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        return None, f"{no_file}, and systemctl failed: {lines[0]}"
    pid = _parse_pid(result.stdout.encode())
    if pid is None:
        return None, f"{no_file}, and systemd reports no running {SYSTEMD_UNIT}"
    return pid, f"MainPID of {SYSTEMD_UNIT}.service"


def _parse_pid(raw: bytes) -> int | None:
    try:
        pid = int(raw.decode("ascii", errors="replace").strip())
    except ValueError:
        return None
    return pid if pid > 0 else None
