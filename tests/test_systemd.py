"""systemd integration: sd_notify messages, the watchdog, the pid file, trigger.

The subprocess tests run the real ``bookingsync run`` against the emulators
and read its notifications from a datagram socket that replaces systemd's
``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from bookingsync.daemon.notify import Notifier
from bookingsync.daemon.pidfile import DaemonRunning, PidFile, trigger_daemon
from bookingsync.daemon.service import (
    IN_FLIGHT_REQUESTS,
    WorkerHealth,
    describe_report,
    wedged_after_seconds,
)
from bookingsync.engine.sync import SyncReport
from bookingsync.models.db import open_engine
from bookingsync.models.state import SCHEMA_VERSION, Meta, Run
from bookingsync.settings import Settings
from tests.conftest import run_cli

AddBooking = Callable[..., dict[str, Any]]


class NotifyListener:
    """A datagram socket that collects sd_notify messages, like systemd does."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if address.startswith("@"):
            self._socket.bind(b"\0" + address[1:].encode())
        else:
            self._socket.bind(address)
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append(data.decode())

    def received(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def fields(self, key: str) -> list[str]:
        """Return every value sent for ``key``, in order."""
        prefix = key + "="
        return [
            line[len(prefix) :]
            for message in self.received()
            for line in message.splitlines()
            if line.startswith(prefix)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    # AF_UNIX paths are limited to about 100 bytes, so pytest's long tmp_path
    # is not used for the socket.
    directory = tempfile.mkdtemp(prefix="bs-notify-")
    notify = NotifyListener(os.path.join(directory, "notify.sock"))
    yield notify
    notify.close()
    os.unlink(notify.address)
    os.rmdir(directory)


@pytest.fixture
def daemon_env(
    cli_env: dict[str, str], tmp_path: Path, listener: NotifyListener
) -> dict[str, str]:
    """Environment for a daemon subprocess under a stand-in systemd."""
    env = dict(cli_env)
    env.update(
        {
            "BOOKINGSYNC_POLL_INTERVAL": "3600",
            # Keeps the pid file in tmp_path when the database is PostgreSQL.
            "STATE_DIRECTORY": str(tmp_path / "state"),
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "600000",
            # No systemctl on PATH: trigger must never reach a real service.
            "PATH": os.path.dirname(sys.executable),
        }
    )
    return env


def run_count(env: dict[str, str]) -> int:
    """Return the number of finished runs that `status --json` lists."""
    result = run_cli(env, "status", "--json")
    if result.returncode != 0:
        return -1
    return sum(1 for run in json.loads(result.stdout)["runs"] if run["finished_at"])


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start_daemon(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bookingsync", "--config", os.devnull, "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_daemon(daemon: subprocess.Popen[str]) -> str:
    """Kill the daemon if it still runs and return its stderr."""
    if daemon.poll() is None:
        daemon.kill()
    _, stderr = daemon.communicate(timeout=10)
    return stderr


def test_daemon_sends_ready_status_watchdog_stopping(
    daemon_env: dict[str, str],
    listener: NotifyListener,
    add_booking: AddBooking,
) -> None:
    """A daemon run sends READY, a STATUS per run, WATCHDOG pings and STOPPING."""
    add_booking()
    daemon = start_daemon(daemon_env)
    try:
        assert wait_for(lambda: "1" in listener.fields("READY"))
        assert wait_for(
            lambda: any(
                s.startswith("synced 1 bookings") for s in listener.fields("STATUS")
            )
        )
        assert wait_for(lambda: len(listener.fields("WATCHDOG")) >= 2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        stderr = stop_daemon(daemon)

    statuses = listener.fields("STATUS")
    summary = next(s for s in statuses if s.startswith("synced"))
    assert summary.startswith("synced 1 bookings, 0 failed, next poll "), stderr
    assert listener.fields("STOPPING") == ["1"]
    first = listener.received()
    assert first[0].startswith("READY=1"), first
    assert not list((Path(daemon_env["STATE_DIRECTORY"])).glob("*.pid"))


def test_daemon_newer_schema_never_ready(
    daemon_env: dict[str, str], database_url: str, listener: NotifyListener
) -> None:
    """A database newer than the code stops start-up with exit 2 before READY."""
    engine = open_engine(database_url)
    with Session(engine) as session:
        meta = session.exec(select(Meta).where(Meta.key == "schema_version")).one()
        meta.value = str(SCHEMA_VERSION + 1)
        session.add(meta)
        session.commit()
    engine.dispose()

    daemon = start_daemon(daemon_env)
    try:
        status = daemon.wait(timeout=30)
    finally:
        stderr = stop_daemon(daemon)

    assert status == 2, stderr
    assert "newer than" in stderr
    time.sleep(0.2)
    assert listener.fields("READY") == []


class TrickleServer:
    """An HTTP server that starts each reply, then sends one byte at a time.

    httpx's read timeout applies to each read, so a client of this server
    never times out: the sync hangs the way it would behind a broken proxy.
    Each connection is dropped after ``max_seconds`` so the server stops.
    """

    def __init__(self, max_seconds: float = 30.0) -> None:
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(
                target=self._trickle, args=(connection,), daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                request += chunk
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000000\r\n\r\n["
            )
            deadline = time.monotonic() + self.max_seconds
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    connection.sendall(b" ")
                except OSError:
                    return
                # Far below the test's read timeout, even on a busy machine.
                time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._accept_thread.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer()
    yield server
    server.close()


def test_daemon_watchdog_stops_when_sync_wedged(
    daemon_env: dict[str, str], listener: NotifyListener, trickle: TrickleServer
) -> None:
    """Pings flow while the run is young and stop once it is past its limit."""
    daemon_env["BOOKINGSYNC_VYTE_BASE_URL"] = trickle.url
    daemon_env["BOOKINGSYNC_RUN_DEADLINE"] = "0.1"
    timeouts = {"CONNECT": 0.05, "READ": 0.25, "WRITE": 0.05, "POOL": 0.05}
    for name, seconds in timeouts.items():
        daemon_env[f"BOOKINGSYNC_HTTP_{name}_TIMEOUT"] = str(seconds)
    wedged_after = 0.1 + IN_FLIGHT_REQUESTS * sum(timeouts.values())
    daemon = start_daemon(daemon_env)
    try:
        assert wait_for(lambda: "1" in listener.fields("READY"))
        started = time.monotonic()
        assert wait_for(lambda: len(listener.fields("WATCHDOG")) >= 3, timeout=3)
        assert wait_for(
            lambda: any(s.startswith("unhealthy") for s in listener.fields("STATUS")),
            timeout=wedged_after + 5,
        )
        assert time.monotonic() - started >= wedged_after - 1
        pings = len(listener.fields("WATCHDOG"))
        time.sleep(1.0)
        assert len(listener.fields("WATCHDOG")) == pings
    finally:
        stderr = stop_daemon(daemon)

    assert "Daemon unhealthy: a sync run has lasted" in stderr


def test_trigger_delivers_sigusr1_to_daemon(
    daemon_env: dict[str, str], add_booking: AddBooking
) -> None:
    """`trigger` makes the running daemon sync once more and exits 0."""
    add_booking()
    daemon = start_daemon(daemon_env)
    try:
        assert wait_for(lambda: run_count(daemon_env) == 1)

        result = run_cli(daemon_env, "trigger")

        assert result.returncode == 0, result.stderr
        assert "SIGUSR1 sent to the daemon, pid" in result.stdout
        assert wait_for(lambda: run_count(daemon_env) == 2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        stop_daemon(daemon)


def test_trigger_without_daemon_exits_four(daemon_env: dict[str, str]) -> None:
    """With no daemon and no systemctl, `trigger` reports failure and exits 4."""
    result = run_cli(daemon_env, "trigger")

    assert result.returncode == 4
    assert "not delivered: no running daemon found (no pid file at" in result.stderr


def test_second_daemon_on_same_state_exits_three(
    daemon_env: dict[str, str], listener: NotifyListener
) -> None:
    """A second daemon on the same state refuses to start and never sends READY."""
    first = start_daemon(daemon_env)
    try:
        assert wait_for(lambda: len(listener.fields("READY")) == 1)
        second = start_daemon(daemon_env)
        status = second.wait(timeout=30)
        stderr = stop_daemon(second)
        assert status == 3, stderr
        assert "another bookingsync daemon (pid" in stderr
        assert len(listener.fields("READY")) == 1
    finally:
        stop_daemon(first)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a bookingsync daemon."""
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait(timeout=5)


def test_trigger_ignores_stale_pid_file(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A pid file that no process locks is stale, and its pid is never signalled."""
    path = tmp_path / "bookingsync.db.pid"
    path.write_text(f"{sleeper.pid}\n")

    result = trigger_daemon(path)

    assert not result.delivered
    assert "left over from a stopped daemon" in result.message
    assert sleeper.poll() is None


def fake_systemctl(directory: Path, main_pid: int) -> None:
    script = directory / "systemctl"
    script.write_text(f"#!/bin/sh\necho {main_pid}\n")
    script.chmod(0o755)


def test_trigger_falls_back_to_systemd_main_pid(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sleeper: subprocess.Popen[bytes],
) -> None:
    """Without a pid file, `trigger` signals the unit's MainPID from systemctl."""
    fake_systemctl(tmp_path, sleeper.pid)
    monkeypatch.setenv("PATH", str(tmp_path))

    result = trigger_daemon(tmp_path / "missing.pid", signal.SIGTERM)

    assert result.delivered, result.message
    assert "MainPID of bookingsync.service" in result.message
    assert sleeper.wait(timeout=5) == -signal.SIGTERM


def test_trigger_main_pid_zero_means_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's MainPID 0 means the unit is not running."""
    fake_systemctl(tmp_path, 0)
    monkeypatch.setenv("PATH", str(tmp_path))

    result = trigger_daemon(tmp_path / "missing.pid")

    assert not result.delivered
    assert "systemd reports no running bookingsync" in result.message


def test_pid_file_second_acquire_names_holder(tmp_path: Path) -> None:
    """The pid file admits one daemon, names it to the next, and is removed."""
    path = tmp_path / "bookingsync.pid"
    first = PidFile(path)
    first.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(DaemonRunning, match=f"pid {os.getpid()}"):
            PidFile(path).acquire(wait_seconds=0)
    finally:
        first.release()

    assert not path.exists()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_worker_health_wedged_only_past_limit() -> None:
    """A run counts as wedged only once it lasts longer than the limit."""
    clock = FakeClock()
    health = WorkerHealth(wedged_after=60.0, clock=clock)
    assert health.healthy()

    health.run_started()
    clock.now += 60.0
    assert health.healthy()
    clock.now += 0.5
    assert not health.healthy()
    assert health.run_seconds() == 60.5

    health.run_finished()
    assert health.healthy()
    assert health.run_seconds() is None


def test_wedged_after_adds_request_timeouts(settings: Settings) -> None:
    """The limit is the run deadline plus the in-flight requests' timeouts."""
    custom = settings.model_copy(
        update={
            "run_deadline": 100.0,
            "http_connect_timeout": 1.0,
            "http_read_timeout": 2.0,
            "http_write_timeout": 3.0,
            "http_pool_timeout": 4.0,
        }
    )

    assert wedged_after_seconds(custom) == 100.0 + IN_FLIGHT_REQUESTS * 10.0


def test_describe_report_counts_changes() -> None:
    """The status line counts created, updated and cancelled bookings."""
    run = Run(trigger="schedule", mode="poll", created=2, updated=3, cancelled=1)
    report = SyncReport(run_id=1, run=run, failed={"vyte:x": "invalid"})

    assert describe_report(report) == "synced 6 bookings, 1 failed"

    report.stopped = "Pipedrive rejected the token"
    assert describe_report(report) == (
        "run stopped: Pipedrive rejected the token (synced 6, 1 failed)"
    )


def test_notifier_without_socket_sends_nothing() -> None:
    notifier = Notifier(environ={})

    assert not notifier.enabled
    assert notifier.send(READY="1") is False
    assert notifier.watchdog_interval is None


def test_notifier_abstract_socket() -> None:
    """An address starting with @ names a socket in the abstract namespace."""
    address = f"@bookingsync-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener(address)
    notifier = Notifier(environ={"NOTIFY_SOCKET": address})
    try:
        notifier.ready("started")
        assert wait_for(lambda: listener.received() == ["READY=1\nSTATUS=started"])
    finally:
        notifier.close()
        listener.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["set", "own-pid", "other-pid", "zero", "invalid", "unset"],
)
def test_notifier_watchdog_interval(
    environ: dict[str, str], expected: float | None
) -> None:
    """Pings go out at half of WATCHDOG_USEC, and only to the expected pid."""
    assert Notifier(environ=environ).watchdog_interval == expected
