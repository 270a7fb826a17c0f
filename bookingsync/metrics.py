"""Prometheus metrics in a file for node_exporter's textfile collector.

bookingsync listens on no port. After each run ``MetricsFile.update()``
renders the metrics with the Prometheus client library and replaces the file
atomically: ``write_to_textfile`` writes a temporary file beside it, then
renames it over the old one.

Every value is computed from the state database when the file is written,
not kept in process memory. Runs, bookings, tokens, the last success and the
duration come from the run table. Pipedrive responses by status class come
from a meta row that each run adds its new responses to. So a one-shot
``bookingsync sync`` and the daemon write the same totals, the counters keep
growing across restarts instead of starting again at 0, and neither process
undoes what the other counted. Dry runs count only in the Pipedrive request
and token totals, because they write nothing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func
from sqlmodel import Session, col, select

from bookingsync.engine.store import Store
from bookingsync.models.state import BookingState, Run
from bookingsync.sinks.pipedrive import Usage

RESPONSES_KEY = "metrics_pipedrive_responses"
# Run outcomes that mean the pass finished: "partial" counts because one
# booking that keeps failing would otherwise hide that all others sync.
SUCCESS_OUTCOMES = ("ok", "partial")
# The file is metrics, not secrets, and node_exporter reads it as another
# user, so it is made readable to all despite the service's UMask=0077.
FILE_MODE = 0o644


class StateCollector:
    """Collect the metrics from the run table and the recorded response totals."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        with self.store.session() as session:
            metrics = [
                self._runs(session),
                *self._bookings(session),
                self._responses(),
                self._tokens(session),
                *self._last_runs(session),
            ]
        return metrics

    def _runs(self, session: Session) -> Metric:
        family = CounterMetricFamily(
            "bookingsync_runs",
            "Finished sync runs (dry runs excluded) by outcome.",
            labels=["outcome"],
        )
        rows = session.exec(
            select(Run.outcome, func.count())
            .where(*_finished_runs())
            .group_by(Run.outcome)
        ).all()
        for outcome, count in sorted(rows):
            family.add_metric([outcome], count)
        return family

    def _bookings(self, session: Session) -> list[Metric]:
        created, updated, cancelled, failed = session.exec(
            select(
                func.coalesce(func.sum(Run.created), 0),
                func.coalesce(func.sum(Run.updated), 0),
                func.coalesce(func.sum(Run.cancelled), 0),
                func.coalesce(func.sum(Run.failed), 0),
            ).where(*_finished_runs())
        ).one()
        synced = CounterMetricFamily(
            "bookingsync_bookings_synced",
            "Bookings written to Pipedrive, by the change made.",
            labels=["change"],
        )
        synced.add_metric(["created"], created)
        synced.add_metric(["updated"], updated)
        synced.add_metric(["cancelled"], cancelled)
        failures = CounterMetricFamily(
            "bookingsync_bookings_failed",
            "Booking failures summed over runs: a booking failing in 3 runs "
            "counts 3 times.",
            value=failed,
        )
        failing_now = session.exec(
            select(func.count())
            .select_from(BookingState)
            .where(col(BookingState.error).is_not(None))
        ).one()
        failing = GaugeMetricFamily(
            "bookingsync_bookings_failing",
            "Bookings whose last attempt failed and that wait for a retry or a fix.",
            value=failing_now,
        )
        return [synced, failures, failing]

    def _responses(self) -> Metric:
        family = CounterMetricFamily(
            "bookingsync_pipedrive_requests",
            "Pipedrive responses by HTTP status class (2xx, 4xx, 5xx).",
            labels=["status_class"],
        )
        for status_class, count in sorted(load_responses(self.store).items()):
            family.add_metric([status_class], count)
        return family

    def _tokens(self, session: Session) -> Metric:
        tokens = session.exec(select(func.coalesce(func.sum(Run.tokens), 0))).one()
        return CounterMetricFamily(
            "bookingsync_pipedrive_tokens",
            "Estimated Pipedrive API tokens spent from the daily budget.",
            value=tokens,
        )

    def _last_runs(self, session: Session) -> list[Metric]:
        metrics: list[Metric] = []
        last_success = session.exec(
            select(func.max(Run.finished_at)).where(
                *_finished_runs(), col(Run.outcome).in_(SUCCESS_OUTCOMES)
            )
        ).one()
        if last_success is not None:
            metrics.append(
                GaugeMetricFamily(
                    "bookingsync_last_success_timestamp_seconds",
                    "When the last run that finished its pass ended (Unix time); "
                    "runs with failed bookings count.",
                    value=last_success.timestamp(),
                )
            )
        last = session.exec(
            select(Run).where(*_finished_runs()).order_by(col(Run.id).desc()).limit(1)
        ).first()
        if last is not None and last.finished_at is not None:
            duration = (last.finished_at - last.started_at).total_seconds()
            metrics.append(
                GaugeMetricFamily(
                    "bookingsync_last_run_duration_seconds",
                    "How long the last finished run took.",
                    value=duration,
                )
            )
        return metrics


def _finished_runs() -> tuple[Any, ...]:
    """Return the conditions selecting finished runs that were not dry runs."""
    return (col(Run.finished_at).is_not(None), col(Run.dry_run).is_(False))


def load_responses(store: Store) -> Counter[str]:
    """Return the Pipedrive responses recorded so far, by status class."""
    value = store.get_meta(RESPONSES_KEY)
    return Counter(json.loads(value)) if value else Counter()


class MetricsFile:
    """The metrics file of one process, rewritten after each run.

    Call ``update()`` while holding the sync lock, so that two processes do
    not both add their responses to the stored totals at once.
    """

    def __init__(self, path: Path, store: Store, usage: Usage) -> None:
        self.path = path
        self.store = store
        self.usage = usage
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(store))
        self._recorded: Counter[str] = Counter()
        self._failure: str | None = None

    def update(self) -> None:
        """Store the responses counted since the last update, then write the file."""
        self._record_responses()
        try:
            write_to_textfile(str(self.path), self.registry)
            os.chmod(self.path, FILE_MODE)
        except OSError as exc:
            self._report_failure(str(exc))
            return
        if self._failure is not None:
            logger.info("Metrics file {path} written again", path=str(self.path))
            self._failure = None

    def _record_responses(self) -> None:
        current = Counter(self.usage.responses)
        new = current - self._recorded
        if new:
            totals = load_responses(self.store)
            totals.update(new)
            self.store.set_meta(RESPONSES_KEY, json.dumps(totals, sort_keys=True))
        self._recorded = current

    def _report_failure(self, error: str) -> None:
        # A directory that stays unwritable fails after every run: log it
        # once at ERROR, and again only when the error changes.
        level = "DEBUG" if error == self._failure else "ERROR"
        logger.log(
            level,
            "Writing the metrics file {path} failed: {error}",
            path=str(self.path),
            error=error,
        )
        self._failure = error
