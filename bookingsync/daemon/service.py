"""The long-running daemon: APScheduler jobs, signals and a clean stop.

Signal handlers only set events; the main thread turns them into actions.
All sync jobs run on one worker thread, so they never overlap in this
process, and the lock file keeps them apart from a manual ``sync``.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger

from bookingsync.app import App
from bookingsync.engine.sync import Mode
from bookingsync.errors import LockBusy

POLL_JOB = "poll"
FULL_JOB = "full-rescan"
MANUAL_JOB = "manual"


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


class Daemon:
    def __init__(self, app: App) -> None:
        self.app = app
        self.stop_requested = app.engine.stop_requested
        self.trigger_requested = threading.Event()
        self.wake = threading.Event()
        self.scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(max_workers=1)}
        )

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
        try:
            self.app.sync(mode, trigger=trigger, wait_seconds=0)
        except LockBusy as exc:
            logger.warning(
                "Skipping this {trigger} run: {error}", trigger=trigger, error=str(exc)
            )
        except Exception:
            logger.exception("Sync run crashed; the next run will retry")

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
        self.install_signal_handlers()
        self.schedule()
        self.scheduler.start()
        logger.info(
            "bookingsync started: polling every {interval} s",
            interval=self.app.settings.poll_interval,
        )
        while not self.stop_requested.is_set():
            self.wake.wait(timeout=5)
            self.wake.clear()
            if self.trigger_requested.is_set() and not self.stop_requested.is_set():
                self.trigger_requested.clear()
                self._queue_manual_run()
        logger.info("Stopping: finishing the booking in flight")
        self.scheduler.shutdown(wait=True)
        self.app.close()
        logger.info("bookingsync stopped")
        return 0

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
