"""Crashes, faults, rate limits and changes made outside bookingsync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bookingsync.app import App
from bookingsync.daemon.lock import SyncLock
from bookingsync.engine.mapping import booking_marker
from bookingsync.engine.sync import Mode
from bookingsync.errors import BudgetExhausted, RateLimited
from bookingsync.http import ApiClient
from bookingsync.sandbox.faults import FaultAction, FaultRule
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer, Request, Response
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sinks.pipedrive import BurstPacer
from bookingsync.status import collect_status
from tests.conftest import PIPEDRIVE_TOKEN, in_days, run_cli

AddBooking = Callable[..., dict[str, Any]]

COMPANY_BOOKER = [
    {"full_name": "Jane Roe", "email": "jane@acme.example", "company": "ACME"}
]
GMAIL_BOOKER = [{"full_name": "Max Muster", "email": "max.muster@gmail.com"}]


def counts(emulator: PipedriveEmulator) -> dict[str, int]:
    return {
        kind: len(emulator.live(kind))
        for kind in ("organizations", "persons", "deals", "activities")
    }


def marked_activities(emulator: PipedriveEmulator, event_id: str) -> int:
    needle = booking_marker(f"vyte:{event_id}") + "</p>"
    return sum(1 for a in emulator.live("activities") if needle in (a["note"] or ""))


# Crashes -------------------------------------------------------------------

WRITES_FOR_TWO_BOOKINGS = 7  # org, person, deal, activity; person, deal, activity


@pytest.mark.parametrize("kill_at", range(1, WRITES_FOR_TWO_BOOKINGS + 1))
def test_crash_after_each_write_leaves_one_of_each(
    kill_at: int,
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """SIGKILL right after Pipedrive applied write N; a restart duplicates nothing."""
    pipedrive_emulator.search_index_lag_seconds = 3600
    first = add_booking(COMPANY_BOOKER)
    second = add_booking(GMAIL_BOOKER, start=in_days(5))
    process = _start_sync(cli_env)
    _kill_after_write(pipedrive, process, kill_at)

    assert process.wait(timeout=60) == -signal.SIGKILL
    pipedrive.on_handled = None
    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    assert counts(pipedrive_emulator) == {
        "organizations": 1,
        "persons": 2,
        "deals": 2,
        "activities": 2,
    }
    assert marked_activities(pipedrive_emulator, first["_id"]) == 1
    assert marked_activities(pipedrive_emulator, second["_id"]) == 1


def _start_sync(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bookingsync", "--config", os.devnull, "sync"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _kill_after_write(
    server: EmulatorServer, process: subprocess.Popen[str], kill_at: int
) -> None:
    writes = 0

    def hook(request: Request, response: Response) -> None:
        nonlocal writes
        if request.method in ("POST", "PATCH") and response.status < 300:
            writes += 1
            if writes == kill_at:
                os.kill(process.pid, signal.SIGKILL)

    server.on_handled = hook


def test_lost_state_database_rebuilds_mapping(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
    database_url: str,
    tmp_path: Path,
) -> None:
    """A fresh database finds the existing items by natural key and marker."""
    if not database_url.startswith("sqlite"):
        pytest.skip("deletes a SQLite file")
    event = add_booking(COMPANY_BOOKER)
    add_booking(GMAIL_BOOKER, start=in_days(4))
    make_app().sync()
    before = counts(pipedrive_emulator)
    fresh = f"sqlite:///{tmp_path / 'replacement.db'}"

    report = make_app(database_url=fresh).sync()

    assert report.ok, report.failed
    assert counts(pipedrive_emulator) == before
    new_start = in_days(6, hour=16)
    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(hours=1))
    make_app(database_url=fresh).sync()
    assert counts(pipedrive_emulator) == before
    assert marked_activities(pipedrive_emulator, event["_id"]) == 1


def test_sigterm_finishes_booking_in_flight(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """SIGTERM mid-run completes the current booking, exits 0, loses nothing."""
    for day in range(1, 6):
        add_booking(
            [{"full_name": f"G{day}", "email": f"g{day}@gmail.com"}], start=in_days(day)
        )
    process = _start_sync(cli_env)

    def hook(request: Request, response: Response) -> None:
        if request.method == "POST" and request.path.endswith("/persons"):
            process.send_signal(signal.SIGTERM)
            pipedrive.on_handled = None

    pipedrive.on_handled = hook

    assert process.wait(timeout=60) == 0
    first_pass = counts(pipedrive_emulator)
    assert first_pass["activities"] == 1
    assert first_pass["persons"] == 1
    assert run_cli(cli_env, "sync").returncode == 0
    assert counts(pipedrive_emulator)["activities"] == 5
    assert counts(pipedrive_emulator)["persons"] == 5


# Faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [FaultAction.STATUS, FaultAction.DROP_BEFORE, FaultAction.DROP_AFTER],
    ids=["503-before", "dropped-before", "dropped-after-applying"],
)
def test_failed_create_is_not_duplicated(
    action: FaultAction,
    app: App,
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A create that errs, or whose reply is lost, still makes exactly one item."""
    for path in ("/api/v2/persons", "/api/v2/activities", "/api/v2/deals"):
        pipedrive.faults.add(
            FaultRule(
                action,
                status=503,
                nth=frozenset({1}),
                methods=frozenset({"POST"}),
                path_prefix=path,
            )
        )
    add_booking(GMAIL_BOOKER)

    report = app.sync()

    assert report.ok, report.failed
    assert counts(pipedrive_emulator) == {
        "organizations": 0,
        "persons": 1,
        "deals": 1,
        "activities": 1,
    }


def test_timed_out_create_is_not_duplicated(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A create applied but replied to after the read timeout is found, not redone."""
    app = make_app(http_read_timeout=0.5)
    pipedrive.faults.add(
        FaultRule(
            FaultAction.DELAY_AFTER,
            delay_seconds=1.0,
            nth=frozenset({1}),
            methods=frozenset({"POST"}),
            path_prefix="/api/v2/activities",
        )
    )
    add_booking(GMAIL_BOOKER)

    report = app.sync()

    assert report.ok, report.failed
    assert counts(pipedrive_emulator)["activities"] == 1


def test_server_errors_on_reads_are_retried(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """Two 503s on searches are retried and the booking syncs."""
    pipedrive.faults.add(
        FaultRule(
            FaultAction.STATUS,
            status=503,
            nth=frozenset({1, 2}),
            methods=frozenset({"GET"}),
        )
    )
    add_booking(GMAIL_BOOKER)

    report = app.sync()

    assert report.ok, report.failed


def test_persistent_failure_recorded_and_retried_later(
    app: App,
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A booking failing on every attempt is recorded; the others still sync."""
    pipedrive.faults.add(
        FaultRule(
            FaultAction.STATUS,
            status=500,
            rate=1.0,
            methods=frozenset({"GET"}),
            path_prefix="/api/v2/persons/search",
        )
    )
    add_booking(COMPANY_BOOKER)
    app.client._sleep = lambda _seconds: None  # noqa: SLF001 -- keep retries fast

    report = app.sync()

    assert report.run is not None
    assert report.run.failed == 1
    failing = collect_status(app.store)["failing"]
    assert failing[0]["next_retry_at"] is not None
    assert "HTTP 500" in failing[0]["error"]
    pipedrive.faults.clear()
    pipedrive.clear_log()
    assert app.sync().run.failed == 0  # type: ignore[union-attr]
    assert pipedrive.writes() == []  # The retry waits for next_retry_at.


def test_rejection_recorded_not_retried(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
) -> None:
    """A 400 is recorded with Pipedrive's message and not sent again unchanged."""
    app = make_app(activity_type="no_such_type")
    add_booking(GMAIL_BOOKER)

    report = app.sync()

    assert len(report.failed) == 1
    error = next(iter(report.failed.values()))
    assert "HTTP 400" in error
    pipedrive.clear_log()
    app.sync()
    assert pipedrive.writes() == []


def test_revoked_token_stops_run_at_once(
    make_app: Callable[..., App], add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """A 401 stops the run after one request and names the setting to check."""
    for day in range(1, 4):
        add_booking(start=in_days(day))
    app = make_app(pipedrive_api_token="revoked-token")

    report = app.sync()

    assert report.stopped is not None
    assert "BOOKINGSYNC_PIPEDRIVE_API_TOKEN" in report.stopped
    assert "revoked-token" not in report.stopped
    assert len(pipedrive.requests) == 1
    assert collect_status(app.store)["failing"] == []


def test_expired_plan_stops_run(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """A 402 (account closed) stops the run instead of failing each booking."""
    pipedrive.faults.add(FaultRule(FaultAction.STATUS, status=402, rate=1.0))
    add_booking()

    report = app.sync()

    assert report.stopped is not None
    assert "HTTP 402" in report.stopped


@pytest.fixture
def budget_pipedrive() -> PipedriveEmulator:
    return PipedriveEmulator(token=PIPEDRIVE_TOKEN, daily_token_budget=100)


def test_spent_budget_pauses_until_reset(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    budget_pipedrive: PipedriveEmulator,
) -> None:
    """A spent budget stops the run, nothing is sent until the reset, none lost."""
    for day in range(1, 5):
        add_booking(
            [{"full_name": f"G{day}", "email": f"g{day}@gmail.com"}], start=in_days(day)
        )
    with EmulatorServer(budget_pipedrive) as server:
        app = make_app(pipedrive_base_url=server.url)
        start = app.engine.now()
        days = 0
        while (report := app.sync()).stopped is not None:
            assert "budget" in report.stopped
            server.clear_log()
            assert app.sync().stopped is not None
            assert server.requests == []
            days += 1
            assert days < 10
            budget_pipedrive.reset_daily_budget()
            later = start + timedelta(days=days)
            app.engine.now = lambda later=later: later  # type: ignore[misc]

        assert days >= 1
        assert counts(budget_pipedrive) == {
            "organizations": 0,
            "persons": 4,
            "deals": 4,
            "activities": 4,
        }


def test_client_waits_retry_after_on_429() -> None:
    """A 429 with Retry-After: 7 sleeps 7 seconds, then retries."""
    replies = iter(
        [
            httpx.Response(429, headers={"retry-after": "7"}),
            httpx.Response(200, json={}),
        ]
    )
    sleeps: list[float] = []
    client = ApiClient(
        "http://127.0.0.1:9",
        {},
        httpx.Timeout(1.0),
        transport=httpx.MockTransport(lambda request: next(replies)),
        sleep=sleeps.append,
    )

    assert client.request("GET", "/x") == {}
    assert sleeps == [7.0]


def test_client_gives_up_after_bounded_429s() -> None:
    """Repeated 429s end in RateLimited after the attempt limit."""
    client = ApiClient(
        "http://127.0.0.1:9",
        {},
        httpx.Timeout(1.0),
        transport=httpx.MockTransport(
            lambda request: httpx.Response(429, headers={"retry-after": "1"})
        ),
        sleep=lambda _seconds: None,
    )

    with pytest.raises(RateLimited):
        client.request("GET", "/x")


def test_daily_budget_429_is_not_retried() -> None:
    """A 429 with no daily tokens left raises BudgetExhausted at once."""
    from bookingsync.sinks.pipedrive import PipedriveClient

    calls: list[int] = []

    def reply(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(
            429, headers={"x-daily-ratelimit-token-remaining": "0", "retry-after": "60"}
        )

    client = PipedriveClient(
        "http://127.0.0.1:9",
        {},
        httpx.Timeout(1.0),
        transport=httpx.MockTransport(reply),
        sleep=lambda _seconds: None,
        pacer=BurstPacer(100, sleep=lambda _seconds: None),
    )

    with pytest.raises(BudgetExhausted):
        client.request("GET", "/api/v2/persons")
    assert len(calls) == 1


def test_pacer_keeps_under_burst_limit() -> None:
    """Six requests with a limit of 3 per 2 s wait for the window to pass."""
    now = [0.0]
    pacer = BurstPacer(
        3, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    sent = []
    for _ in range(6):
        pacer.wait()
        sent.append(now[0])

    assert sent[:3] == [0.0, 0.0, 0.0]
    assert sent[3] >= 2.0
    assert sent[5] >= 2.0


def test_burst_limit_never_hit(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte: EmulatorServer,
) -> None:
    """Paced at the emulator's burst limit, a backfill meets no 429."""
    emulator = PipedriveEmulator(token=PIPEDRIVE_TOKEN, burst_limit=10)
    for day in range(1, 6):
        add_booking(
            [{"full_name": f"G{day}", "email": f"g{day}@gmail.com"}], start=in_days(day)
        )
    with EmulatorServer(emulator) as server:
        app = make_app(pipedrive_base_url=server.url, pipedrive_burst_limit=10)
        report = app.sync()

        assert report.ok
        assert [r for r in server.requests if r.status == 429] == []


# Changes made in Pipedrive ---------------------------------------------------


def test_deleted_activity_stays_deleted_until_booking_changes(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A user's deletion is kept and listed; a reschedule recreates the activity."""
    event = add_booking()
    app.sync()
    activity_id = pipedrive_emulator.live("activities")[0]["id"]
    pipedrive_emulator.ui_delete("activities", activity_id)
    pipedrive.clear_log()

    app.sync()
    assert pipedrive.writes() == []
    app.sync(Mode.FULL)
    assert pipedrive.writes() == []
    assert collect_status(app.store)["bookings"].get("gone") == 1
    listed = collect_status(app.store)["deleted_in_pipedrive"]
    assert [item["activity_id"] for item in listed] == [activity_id]

    new_start = in_days(8)
    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(minutes=30))
    app.sync()
    activities = pipedrive_emulator.live("activities")
    assert len(activities) == 1
    assert activities[0]["id"] != activity_id


def test_deleted_activity_final_with_setting(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """With remote_deletions_final, a changed booking does not recreate it."""
    app = make_app(remote_deletions_final=True)
    event = add_booking()
    app.sync()
    pipedrive_emulator.ui_delete(
        "activities", pipedrive_emulator.live("activities")[0]["id"]
    )
    new_start = in_days(8)
    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(minutes=30))

    report = app.sync()

    assert report.ok
    assert pipedrive_emulator.live("activities") == []


def test_merged_person_followed_by_email(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """After a merge in Pipedrive, the next booking uses the surviving person."""
    add_booking(GMAIL_BOOKER)
    app.sync()
    booker = pipedrive_emulator.live("persons")[0]
    survivor = pipedrive_emulator.ui_create(
        "persons", {"name": "Max (CRM)", "emails": [{"value": "max@crm.example"}]}
    )
    pipedrive_emulator.ui_merge_persons(booker["id"], survivor["id"])
    add_booking(GMAIL_BOOKER, start=in_days(9), title="Second call")

    report = app.sync()

    assert report.ok, report.failed
    assert [p["id"] for p in pipedrive_emulator.live("persons")] == [survivor["id"]]
    second = [
        a
        for a in pipedrive_emulator.live("activities")
        if a["subject"] == "Second call"
    ]
    assert second[0]["participants"][0]["person_id"] == survivor["id"]


def test_deleted_deal_replaced_for_next_booking(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """A deal deleted in Pipedrive is not reused; the next booking gets a new one."""
    add_booking(COMPANY_BOOKER)
    app.sync()
    old_deal = pipedrive_emulator.live("deals")[0]["id"]
    pipedrive_emulator.ui_delete("deals", old_deal)
    add_booking(COMPANY_BOOKER, start=in_days(9), title="Second call")

    report = app.sync()

    assert report.ok, report.failed
    deals = pipedrive_emulator.live("deals")
    assert len(deals) == 1
    assert deals[0]["id"] != old_deal


# The safety rail ------------------------------------------------------------


def test_mass_vanish_cancels_nothing_without_force(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Four bookings gone without a trace: exit 5 and no cancellation until --force."""
    events = [add_booking(start=in_days(day)) for day in range(1, 5)]
    assert run_cli(cli_env, "sync").returncode == 0
    for event in events:
        vyte_emulator.remove(event["_id"])

    held = run_cli(cli_env, "sync")

    assert held.returncode == 5
    assert "--force" in held.stderr
    subjects = [a["subject"] for a in pipedrive_emulator.live("activities")]
    assert not any(s.startswith("Cancelled") for s in subjects)
    forced = run_cli(cli_env, "sync", "--force")
    assert forced.returncode == 0, forced.stderr
    subjects = [a["subject"] for a in pipedrive_emulator.live("activities")]
    assert all(s.startswith("Cancelled") for s in subjects)


def test_explicit_cancellations_pass_the_rail(
    app: App, add_booking: AddBooking, vyte_emulator: VyteEmulator
) -> None:
    """Many bookings cancelled in Vyte (not vanished) are all cancelled."""
    events = [add_booking(start=in_days(day)) for day in range(1, 5)]
    app.sync()
    for event in events:
        vyte_emulator.cancel(event["_id"])

    report = app.sync()

    assert report.ok
    assert report.run is not None
    assert report.run.cancelled == 4


# Concurrency ----------------------------------------------------------------


def test_sync_while_locked_exits_three(
    cli_env: dict[str, str], app: App, add_booking: AddBooking
) -> None:
    """A manual sync while another has the lock reports it and exits 3."""
    add_booking()
    lock: SyncLock = app.lock
    lock.acquire()
    try:
        result = run_cli(cli_env, "sync")
    finally:
        lock.release()

    assert result.returncode == 3
    assert "another sync is in progress" in result.stderr


# Timeouts and the run deadline -----------------------------------------------


def test_silent_source_times_out(
    make_app: Callable[..., App], add_booking: AddBooking, vyte: EmulatorServer
) -> None:
    """A Vyte that never replies in time stops the run with a timeout error."""
    vyte.faults.add(FaultRule(FaultAction.DELAY_AFTER, delay_seconds=2.0, rate=1.0))
    add_booking()
    app = make_app(http_read_timeout=0.2)
    app.source.client._sleep = lambda _seconds: None  # noqa: SLF001 -- no backoff

    report = app.sync()

    assert report.stopped is not None
    assert "timed out" in report.stopped


def test_run_deadline_stops_taking_bookings(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Past the run deadline no new booking starts; the next run continues."""
    pipedrive.faults.add(
        FaultRule(FaultAction.DELAY_AFTER, delay_seconds=0.2, rate=1.0)
    )
    for day in range(1, 6):
        add_booking(
            [{"full_name": f"G{day}", "email": f"g{day}@gmail.com"}], start=in_days(day)
        )
    app = make_app(run_deadline=0.5)

    report = app.sync()

    assert report.stopped is not None
    assert "deadline" in report.stopped
    assert len(pipedrive_emulator.live("activities")) < 5
    pipedrive.faults.clear()
    while app.sync().stopped is not None:
        pass
    assert len(pipedrive_emulator.live("activities")) == 5
