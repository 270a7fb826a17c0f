"""Backfill against the rate limit: thousands of new bookings in one run.

The daemon starts with an empty state database while Vyte already contains the
organization's bookings, as on the day it is installed. The Pipedrive
emulator runs in its own process with a burst limit, and the daemon's
``pipedrive_burst_limit`` is set to the same value. The figures are the
requests per second the daemon achieved as a fraction of the limit, and the
number of 429 responses.

After the backfill the same sandbox runs a poll in which nothing changed and
one in which 1% of the bookings were rescheduled, and these three polls are
what ``baseline.py`` compares against a stateless client.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    VYTE_KEY,
    EmulatorProcess,
    RecordingTransport,
    make_settings,
    reschedule_later,
    varied_event,
)
from bookingsync.app import App
from bookingsync.engine.sync import SyncReport
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject, new_object_id

# Pipedrive's limit for API-token requests on its largest plan (Enterprise),
# per rolling 2-second window, from its "Rate limiting" API documentation.
# Smaller plans allow 20, 40, 80 and 100.
BURST_LIMIT = 120
SEARCH_BURST_LIMIT = 10
BURST_WINDOW_SECONDS = 2.0
# Large enough that the daily budget never stops the run.
DAILY_TOKEN_BUDGET = 10_000_000
# Above the number of bookings, so one request lists them all.
PAGE_LIMIT = 100_000
CHANGED_EVERY = 100


@dataclass(frozen=True)
class PollCount:
    """Pipedrive requests and tokens of one poll, as the emulator counted them."""

    label: str
    requests: int
    tokens: int
    rate_limited: int
    wall_seconds: float
    searches: int = 0


@dataclass(frozen=True)
class TimeSplit:
    """The split of the backfill's wall time."""

    wall_seconds: float
    cpu_seconds: float
    awaiting_response_seconds: float
    window_exhausted: int
    reset_seconds: float

    @property
    def other_seconds(self) -> float:
        """Wall time neither in the daemon's CPU nor awaiting a response.

        That is mostly the pacer sleeping, plus waits for the disk.
        """
        return self.wall_seconds - self.cpu_seconds - self.awaiting_response_seconds


@dataclass(frozen=True)
class BackfillResult:
    bookings: int
    bookers: int
    companies: int
    burst_limit: int
    polls: list[PollCount]
    by_endpoint: list[tuple[str, int]]
    split: TimeSplit

    @property
    def backfill(self) -> PollCount:
        return self.polls[0]

    @property
    def requests_per_second(self) -> float:
        return self.backfill.requests / self.backfill.wall_seconds

    @property
    def searches(self) -> int:
        """Search requests of the backfill run (the first poll)."""
        return self.backfill.searches

    @property
    def fastest_seconds(self) -> float:
        """Return the shortest time the limits allow for the backfill's requests.

        Pipedrive allows ``burst_limit`` requests, of which at most 10
        searches, per 2-second window; whichever window binds sets the floor.
        """
        general = self.backfill.requests / (self.burst_limit / BURST_WINDOW_SECONDS)
        search_limit = min(SEARCH_BURST_LIMIT, self.burst_limit)
        search = self.searches / (search_limit / BURST_WINDOW_SECONDS)
        return max(general, search)

    @property
    def fraction_of_limit(self) -> float:
        """Return the backfill's speed as a fraction of what the limits allow."""
        return self.fastest_seconds / self.backfill.wall_seconds


def booking_history(count: int, seed: int = 5000) -> tuple[str, list[JsonObject]]:
    """Return a host id and ``count`` events by a realistic mix of bookers.

    Each booker books four times on average and each company has two or
    three bookers, so most bookings reuse a person, organization or deal
    that an earlier booking created.
    """
    rng = random.Random(seed)
    host_id = new_object_id()
    bookers, companies = mix(count)
    events = []
    for _ in range(count):
        booker = rng.randrange(bookers)
        events.append(varied_event(host_id, rng, booker, booker % companies))
    return host_id, events


def mix(count: int) -> tuple[int, int]:
    """Return the numbers of bookers and companies behind ``count`` bookings."""
    return max(1, count // 4), max(1, count // 10)


def changed_ids(events: list[JsonObject]) -> list[str]:
    return [event["_id"] for event in events[::CHANGED_EVERY]]


def run(workdir: Path, events: list[JsonObject]) -> BackfillResult:
    """Backfill ``events``, then poll unchanged and with 1% rescheduled."""
    vyte = VyteEmulator(api_key=VYTE_KEY)
    for event in events:
        vyte.add_event(event)
    spec: dict[str, Any] = {
        "pipedrive": {
            "burst_limit": BURST_LIMIT,
            "daily_token_budget": DAILY_TOKEN_BUDGET,
        }
    }
    with (
        EmulatorServer(vyte) as vyte_server,
        EmulatorProcess(workdir / "emulators", spec) as pipedrive,
    ):
        settings = make_settings(
            workdir / "state",
            vyte_server.url,
            pipedrive.ready["pipedrive"],
            pipedrive_burst_limit=BURST_LIMIT,
            vyte_page_limit=PAGE_LIMIT,
        )
        transport = RecordingTransport()
        app = App.build(settings, pipedrive_transport=transport)
        try:
            cpu_before = time.process_time()
            polls = [_counted(app, pipedrive, "backfill", len(events))]
            split = TimeSplit(
                polls[0].wall_seconds,
                time.process_time() - cpu_before,
                transport.seconds,
                transport.window_exhausted,
                transport.reset_seconds,
            )
            polls.append(_counted(app, pipedrive, "unchanged poll", 0))
            moved = changed_ids(events)
            reschedule_later(vyte, moved)
            polls.append(_counted(app, pipedrive, "1% rescheduled", len(moved)))
        finally:
            app.close()
        endpoints = _by_endpoint(pipedrive.stats())
    bookers, companies = mix(len(events))
    return BackfillResult(
        len(events), bookers, companies, BURST_LIMIT, polls, endpoints, split
    )


def _counted(
    app: App, pipedrive: EmulatorProcess, label: str, expected: int
) -> PollCount:
    before = pipedrive.stats()
    started = time.perf_counter()
    report = app.sync(trigger="benchmark")
    wall = time.perf_counter() - started
    after = pipedrive.stats()
    _check(report, label, expected)
    requests = _total(after) - _total(before)
    limited = _total(after, status=429) - _total(before, status=429)
    tokens = after["tokens_spent"] - before["tokens_spent"]
    searches = _total(after, searches_only=True) - _total(before, searches_only=True)
    return PollCount(label, requests, tokens, limited, wall, searches)


def _check(report: SyncReport, label: str, expected: int) -> None:
    run = report.run
    written = (run.created + run.updated) if run else -1
    if not report.ok or written != expected:
        raise RuntimeError(
            f"the {label} run wrote {written} bookings, expected {expected}: "
            f"{report.failed or report.stopped}"
        )


def _total(
    stats: dict[str, Any], status: int | None = None, searches_only: bool = False
) -> int:
    return sum(
        count
        for _method, endpoint, code, count in stats["requests"]
        if (status is None or code == status)
        and (not searches_only or endpoint.endswith("/search"))
    )


def _by_endpoint(stats: dict[str, Any]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for _method, endpoint, _status, count in stats["requests"]:
        totals[endpoint] = totals.get(endpoint, 0) + count
    return sorted(totals.items(), key=lambda item: -item[1])
