"""The long-running daemon: APScheduler jobs, signals and a clean stop.

Signal handlers only set events; the main thread turns them into actions.
All sync jobs run on one worker thread, so they never overlap in this
process, and the lock file keeps them apart from a manual ``sync``.

Under systemd the main thread also reports readiness, a status line after
every run and watchdog pings (see ``notify``). The pings stop when a run has
lasted far past its deadline, so systemd restarts a wedged daemon.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from bookingsync.app import App
from bookingsync.daemon.notify import Notifier
from bookingsync.daemon.pidfile import DaemonRunning, PidFile, pid_path
from bookingsync.engine.sync import Mode, SyncReport
from bookingsync.errors import LockBusy
from bookingsync.settings import Settings

NEXT_POLL_KEY = "daemon_next_poll_at"
TRIGGER_DEBOUNCE_SECONDS = 0.5
POLL_JOB = "poll"
FULL_JOB = "full-rescan"
MANUAL_JOB = "manual"

# The CLI's exit status for "another process holds the lock".
EXIT_DAEMON_RUNNING = 3
# Seconds between checks of the stop, trigger and watchdog state.
WAKE_INTERVAL_SECONDS = 5.0
# After the run deadline the engine still finishes the booking in flight. This
# many requests, each using all its timeouts, is what that booking may take.
# NOTE: this is an estimate. A booking that waits out long Retry-After delays
# can take longer, and systemd then restarts the daemon, which replays only
# that booking.
IN_FLIGHT_REQUESTS = 10


def job_options(interval_seconds: int) -> dict[str, object]:
    """Return the options every sync job gets.

    The misfire grace time is one interval: APScheduler's default of one
    second silently drops a run that starts a little late.
    """
    return {
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": interval_seconds,
        "replace_existing": True,
    }


def wedged_after_seconds(settings: Settings) -> float:
    """Return how long a run may last before its worker counts as wedged."""
    request = (
        settings.http_connect_timeout
        + settings.http_write_timeout
        + settings.http_read_timeout
        + settings.http_pool_timeout
    )
    return settings.run_deadline + IN_FLIGHT_REQUESTS * request


class WorkerHealth:
    """The start time of the sync run in progress, if any.

    The worker is healthy while no run is in progress, or while the current
    run has lasted at most ``wedged_after`` seconds.
    """

    def __init__(
        self, wedged_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.wedged_after = wedged_after
        self._clock = clock
        self._run_started: float | None = None

    def run_started(self) -> None:
        self._run_started = self._clock()

    def run_finished(self) -> None:
        self._run_started = None

    def run_seconds(self) -> float | None:
        """Return how long the current run has lasted, or None when idle."""
        started = self._run_started
        return None if started is None else self._clock() - started

    def healthy(self) -> bool:
        seconds = self.run_seconds()
        return seconds is None or seconds <= self.wedged_after


def describe_report(report: SyncReport) -> str:
    """Return the status line for a finished run, without the next poll time."""
    failed = len(report.failed)
    run = report.run
    synced = run.created + run.updated + run.cancelled if run is not None else 0
    if report.stopped:
        return f"run stopped: {report.stopped} (synced {synced}, {failed} failed)"
    return f"synced {synced} bookings, {failed} failed"


class Daemon:
    def __init__(self, app: App, notifier: Notifier | None = None) -> None:
        self.app = app
        self.notifier = notifier if notifier is not None else Notifier()
        self.health = WorkerHealth(wedged_after_seconds(app.settings))
        self.pid_file = PidFile(pid_path(app.settings))
        self.stop_requested = app.engine.stop_requested
        self.trigger_requested = threading.Event()
        self.wake = threading.Event()
        self.scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(max_workers=1)}
        )
        self._reported_problem = False

    def schedule(self) -> None:
        settings = self.app.settings
        poll = settings.poll_interval
        self.scheduler.add_job(
            self.sync_job,
            IntervalTrigger(seconds=poll, jitter=max(1, poll // 10)),
            args=[Mode.POLL, "schedule"],
            id=POLL_JOB,
            next_run_time=datetime.now(UTC),
            **job_options(poll),
        )
        full = settings.full_rescan_interval
        self.scheduler.add_job(
            self.sync_job,
            IntervalTrigger(seconds=full, jitter=max(1, full // 20)),
            args=[Mode.FULL, "full-rescan"],
            id=FULL_JOB,
            **job_options(full),
        )

    def sync_job(self, mode: Mode, trigger: str) -> None:
        if self.stop_requested.is_set():
            return
        self.notifier.status(f"syncing ({trigger})")
        self.health.run_started()
        try:
            status = self._sync(mode, trigger)
        finally:
            self.health.run_finished()
        self.notifier.status(f"{status}, next poll {self._next_poll_text()}")
        self._record_next_poll()

    def _record_next_poll(self) -> None:
        """Store the next poll time, which `bookingsync status` shows."""
        job = self.scheduler.get_job(POLL_JOB)
        next_run: datetime | None = job.next_run_time if job is not None else None
        value = next_run.astimezone(UTC).isoformat() if next_run else None
        try:
            self.app.store.set_meta(NEXT_POLL_KEY, value)
        except SQLAlchemyError:
            logger.exception("Could not record the next poll time")

    def _sync(self, mode: Mode, trigger: str) -> str:
        """Run one pass and return its status line."""
        try:
            report = self.app.sync(mode, trigger=trigger, wait_seconds=0)
        except LockBusy as exc:
            logger.warning(
                "Skipping this {trigger} run: {error}", trigger=trigger, error=str(exc)
            )
            return f"skipped a run: {exc}"
        except Exception as exc:
            logger.exception("Sync run crashed; the next run will retry")
            return f"last run crashed ({type(exc).__name__})"
        return describe_report(report)

    def _next_poll_text(self) -> str:
        job = self.scheduler.get_job(POLL_JOB)
        next_run: datetime | None = job.next_run_time if job is not None else None
        if next_run is None:
            return "not scheduled"
        return next_run.astimezone().strftime("%H:%M")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_trigger)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _on_trigger(self, signum: int, _frame: FrameType | None) -> None:
        self.trigger_requested.set()
        self.wake.set()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit status."""
        try:
            self.pid_file.acquire()
        except DaemonRunning as exc:
            logger.error("Not starting: {error}", error=str(exc))
            self.app.close()
            return EXIT_DAEMON_RUNNING
        try:
            self._serve()
        finally:
            self.pid_file.release()
            self.notifier.close()
        logger.info("bookingsync stopped")
        return 0

    def _serve(self) -> None:
        self.install_signal_handlers()
        self.schedule()
        interval = self.app.settings.poll_interval
        # App.build has validated the settings and migrated the database.
        self.notifier.ready(f"started, polling every {interval} s")
        self.scheduler.start()
        logger.info(
            "bookingsync started: polling every {interval} s", interval=interval
        )
        if self.notifier.watchdog_interval is not None:
            logger.info(
                "Sending systemd watchdog pings every {seconds:.1f} s",
                seconds=self.notifier.watchdog_interval,
            )

        wake_interval = min(
            WAKE_INTERVAL_SECONDS,
            self.notifier.watchdog_interval or WAKE_INTERVAL_SECONDS,
        )
        while not self.stop_requested.is_set():
            self.wake.wait(timeout=wake_interval)
            self.wake.clear()
            if self.trigger_requested.is_set() and not self.stop_requested.is_set():
                # Let the rest of a burst of signals arrive, so that it
                # collapses into one run.
                self.stop_requested.wait(TRIGGER_DEBOUNCE_SECONDS)
                self.trigger_requested.clear()
                self._queue_manual_run()
            self._check_health()

        logger.info("Stopping: finishing the booking in flight")
        self.notifier.stopping("stopping: finishing the booking in flight")
        self.scheduler.shutdown(wait=True)
        self.app.close()

    def _check_health(self) -> None:
        """Ping the watchdog while the scheduler runs and no run is wedged."""
        problem = self._health_problem()
        if problem is None:
            self._reported_problem = False
            if self.notifier.watchdog_interval is not None:
                self.notifier.watchdog()
            return
        if self._reported_problem:
            return
        self._reported_problem = True
        logger.error(
            "Daemon unhealthy: {problem}. Watchdog pings stop so that systemd "
            "restarts the daemon",
            problem=problem,
        )
        self.notifier.status(f"unhealthy: {problem}")

    def _health_problem(self) -> str | None:
        if not self.scheduler.running:
            return "the scheduler has stopped"
        if self.health.healthy():
            return None
        seconds = self.health.run_seconds() or 0.0
        return (
            f"a sync run has lasted {seconds:.0f} s, more than the "
            f"{self.health.wedged_after:.0f} s allowed"
        )

    def _queue_manual_run(self) -> None:
        # One pending manual job at most: a burst of triggers collapses into it.
        logger.info("Sync requested by signal")
        self.scheduler.add_job(
            self.sync_job,
            args=[Mode.POLL, "signal"],
            id=MANUAL_JOB,
            replace_existing=True,
            max_instances=1,
            misfire_grace_time=None,
        )
