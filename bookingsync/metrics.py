"""Prometheus metrics in a file for node_exporter's textfile collector.

bookingsync listens on no port. After each run ``MetricsFile.update()``
renders the metrics with the Prometheus client library and replaces the file
atomically: ``write_to_textfile`` writes a temporary file beside it, then
renames it over the old one.

The counters are running totals kept in a row of the state database's meta
table, not in process memory. Each run adds its counts to them under the
sync lock, and the file is rendered from that row. So a one-shot
``bookingsync sync`` and the daemon write the same totals, the counters do not
start again at 0 in each new process, and neither process undoes what the
other counted. The run table itself cannot hold the totals because full
rescans prune old runs. When the row does not exist yet, it is seeded from
the runs still in the run table. Pipedrive responses by status class are not
in that history, so they count from the first update on.

Dry runs count only in the Pipedrive request and token totals, because they
write nothing. A process killed between the end of a run and the update
loses that run from the totals.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func
from sqlmodel import col, select

from bookingsync.engine.store import Store
from bookingsync.models.state import BookingState, Run
from bookingsync.sinks.pipedrive import Usage

TOTALS_KEY = "metrics_totals"
# Run outcomes that mean the pass finished: "partial" counts because one
# booking that keeps failing would otherwise hide that all others sync.
SUCCESS_OUTCOMES = ("ok", "partial")
CHANGES = ("created", "updated", "cancelled")
# The file contains counts, not secrets, and node_exporter reads it as another
# user, so it is made readable to all despite the service's UMask=0077.
FILE_MODE = 0o644


@dataclass
class Totals:
    """The running totals behind the counters, as stored in the meta table."""

    runs: dict[str, int] = field(default_factory=dict)
    bookings: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    tokens: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    last_success: float | None = None
    last_duration: float | None = None

    @classmethod
    def load(cls, store: Store) -> Totals | None:
        value = store.get_meta(TOTALS_KEY)
        if not value:
            return None
        known = {item.name for item in fields(cls)}
        return cls(**{k: v for k, v in json.loads(value).items() if k in known})

    def save(self, store: Store) -> None:
        store.set_meta(TOTALS_KEY, json.dumps(asdict(self), sort_keys=True))

    def add_run(self, run: Run) -> None:
        """Add one finished run's counts."""
        self.tokens += run.tokens
        if run.dry_run:
            return
        self.runs[run.outcome] = self.runs.get(run.outcome, 0) + 1
        for change in CHANGES:
            self.bookings[change] = self.bookings.get(change, 0) + getattr(run, change)
        self.failed += run.failed
        if run.finished_at is None:
            return
        self.last_duration = (run.finished_at - run.started_at).total_seconds()
        if run.outcome in SUCCESS_OUTCOMES:
            self.last_success = run.finished_at.timestamp()

    def add_responses(self, new: Counter[str]) -> None:
        for status_class, count in new.items():
            self.responses[status_class] = self.responses.get(status_class, 0) + count


def totals_from_history(store: Store) -> Totals:
    """Add up the finished runs still in the run table, oldest first."""
    totals = Totals()
    with store.session() as session:
        runs = session.exec(
            select(Run).where(col(Run.finished_at).is_not(None)).order_by(col(Run.id))
        ).all()
    for run in runs:
        totals.add_run(run)
    return totals


class TotalsCollector:
    """Collect the metrics from the stored totals and the failing bookings."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        totals = Totals.load(self.store) or Totals()
        return [
            _labelled(
                "bookingsync_runs",
                "Finished sync runs, dry runs excluded, by outcome.",
                "outcome",
                totals.runs,
            ),
            _labelled(
                "bookingsync_bookings_synced",
                "Bookings written to Pipedrive, by the change made.",
                "change",
                {change: totals.bookings.get(change, 0) for change in CHANGES},
            ),
            CounterMetricFamily(
                "bookingsync_bookings_failed",
                "Booking failures summed over runs: a booking that fails in "
                "3 runs counts 3 times.",
                value=totals.failed,
            ),
            GaugeMetricFamily(
                "bookingsync_bookings_failing",
                "Bookings whose last attempt failed, waiting for a retry or a fix.",
                value=self._failing_now(),
            ),
            _labelled(
                "bookingsync_pipedrive_requests",
                "Pipedrive responses by HTTP status class.",
                "status_class",
                totals.responses,
            ),
            CounterMetricFamily(
                "bookingsync_pipedrive_tokens",
                "Estimated Pipedrive API tokens spent from the daily budget.",
                value=totals.tokens,
            ),
            *_last_run_gauges(totals),
        ]

    def _failing_now(self) -> int:
        with self.store.session() as session:
            count: int = session.exec(
                select(func.count())
                .select_from(BookingState)
                .where(col(BookingState.error).is_not(None))
            ).one()
        return count


def _labelled(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _last_run_gauges(totals: Totals) -> list[Metric]:
    gauges: list[Metric] = []
    if totals.last_success is not None:
        gauges.append(
            GaugeMetricFamily(
                "bookingsync_last_success_timestamp_seconds",
                "Unix time at which the last run that finished its pass ended; "
                "runs with failed bookings count.",
                value=totals.last_success,
            )
        )
    if totals.last_duration is not None:
        gauges.append(
            GaugeMetricFamily(
                "bookingsync_last_run_duration_seconds",
                "Seconds the last finished run took.",
                value=totals.last_duration,
            )
        )
    return gauges


class MetricsFile:
    """The metrics file, rewritten after each run.

    Call ``update()`` while holding the sync lock, so that two processes never
    add to the stored totals at the same time.
    """

    def __init__(self, path: Path, store: Store, usage: Usage) -> None:
        self.path = path
        self.store = store
        self.usage = usage
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TotalsCollector(store))
        self._recorded: Counter[str] = Counter()
        self._failure: str | None = None

    def update(self, run: Run | None) -> None:
        """Add ``run`` and the new Pipedrive responses to the totals, write the file."""
        totals = Totals.load(self.store)
        if totals is None:
            # The history already contains ``run``, which is finished.
            totals = totals_from_history(self.store)
        elif run is not None:
            totals.add_run(run)
        current = Counter(self.usage.responses)
        totals.add_responses(current - self._recorded)
        self._recorded = current
        totals.save(self.store)
        self._write()

    def _write(self) -> None:
        try:
            write_to_textfile(str(self.path), self.registry)
            os.chmod(self.path, FILE_MODE)
        except OSError as exc:
            self._report_failure(str(exc))
            return
        if self._failure is not None:
            logger.info("Metrics file {path} written again", path=str(self.path))
            self._failure = None

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
