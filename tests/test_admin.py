"""Administrative commands: backfill, resync, retry, forget, prune, status."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bookingsync.app import App
from bookingsync.engine.admin import forget_email, make_failures_due, prune
from bookingsync.engine.sync import Mode
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.status import collect_status, render_status
from tests.conftest import in_days, run_cli

AddBooking = Callable[..., dict[str, Any]]


def test_backfill_since_syncs_older_bookings(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """`sync --since` reaches bookings older than the lookback window."""
    cli_env["BOOKINGSYNC_LOOKBACK_DAYS"] = "30"
    add_booking(start=in_days(-60), title="Old meeting")
    add_booking(start=in_days(2), title="Upcoming")
    assert run_cli(cli_env, "sync").returncode == 0
    assert [a["subject"] for a in pipedrive_emulator.live("activities")] == ["Upcoming"]
    since = (datetime.now(UTC) - timedelta(days=90)).strftime("%Y-%m-%d")

    result = run_cli(cli_env, "sync", "--since", since)

    assert result.returncode == 0, result.stderr
    subjects = sorted(a["subject"] for a in pipedrive_emulator.live("activities"))
    assert subjects == ["Old meeting", "Upcoming"]
    assert "Backfill: 1 of 1 bookings" in result.stderr


def test_backfill_rejects_bad_date(cli_env: dict[str, str]) -> None:
    """An unreadable --since date is a usage error naming the value."""
    result = run_cli(cli_env, "sync", "--since", "last tuesday")

    assert result.returncode == 2
    assert "last tuesday" in result.stderr


def test_resync_pushes_every_field(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A subject edited by hand in Pipedrive is restored by `resync`."""
    event = add_booking(title="Product demo")
    run_cli(cli_env, "sync")
    activity = pipedrive_emulator.live("activities")[0]
    pipedrive_emulator.ui_update("activities", activity["id"], {"subject": "edited"})

    result = run_cli(cli_env, "resync", event["_id"])

    assert result.returncode == 0, result.stderr
    restored = pipedrive_emulator.live("activities")
    assert [a["subject"] for a in restored] == ["Product demo"]


def test_resync_unknown_booking_exit_two(cli_env: dict[str, str]) -> None:
    """`resync` of an id Vyte does not have says so and exits 2."""
    result = run_cli(cli_env, "resync", "0" * 24)

    assert result.returncode == 2
    assert "was not found in vyte" in result.stderr


def test_retry_sends_rejected_booking_again(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A rejected booking waits; `retry` makes it due and it syncs once fixed."""
    broken = make_app(activity_type="no_such_type")
    add_booking()
    assert broken.sync().failed
    assert pipedrive_emulator.live("activities") == []

    fixed = make_app()
    assert fixed.sync().ok
    assert pipedrive_emulator.live("activities") == []
    assert make_failures_due(fixed.store, datetime.now(UTC)) == 1
    assert fixed.sync().ok
    assert len(pipedrive_emulator.live("activities")) == 1


def test_forget_erases_local_traces(app: App, add_booking: AddBooking) -> None:
    """`forget` removes the person mapping and every snapshot naming the email."""
    add_booking([{"full_name": "Jane Roe", "email": "jane.roe@acme.example"}])
    app.sync()

    result = forget_email(app.store, " Jane.Roe@ACME.example ")

    assert result.persons == 1
    assert result.bookings == 1
    assert app.store.person_id("jane.roe@acme.example") is None
    for planned in app.store.booking_states("vyte").values():
        state = app.store.booking_state(planned.key)
        assert state is not None
        assert "jane.roe" not in (state.synced_content or "")
        assert "jane.roe" not in (state.seen_content or "")


def test_forget_then_change_creates_no_duplicate(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """After `forget`, a reschedule updates the same activity and person."""
    event = add_booking([{"full_name": "Jane Roe", "email": "jane@acme.example"}])
    app.sync()
    forget_email(app.store, "jane@acme.example")
    new_start = in_days(7)
    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(minutes=30))

    assert app.sync().ok
    assert len(pipedrive_emulator.live("activities")) == 1
    assert len(pipedrive_emulator.live("persons")) == 1


def test_forget_cli_reports_counts(
    cli_env: dict[str, str], add_booking: AddBooking
) -> None:
    """The `forget` command needs no API credentials and reports what it erased."""
    add_booking([{"full_name": "Jane Roe", "email": "jane@acme.example"}])
    run_cli(cli_env, "sync")
    cli_env.pop("BOOKINGSYNC_PIPEDRIVE_API_TOKEN")

    result = run_cli(cli_env, "forget", "jane@acme.example")

    assert result.returncode == 0, result.stderr
    assert "1 person mapping(s), 1 booking snapshot(s)" in result.stdout


def test_prune_drops_old_snapshots(app: App, add_booking: AddBooking) -> None:
    """Snapshots of bookings that ended before the retention are deleted."""
    add_booking()
    app.sync()

    kept = prune(app.store, datetime.now(UTC), retention_days=30)
    dropped = prune(
        app.store, datetime.now(UTC) + timedelta(days=400), retention_days=30
    )

    assert kept == (0, 0)
    assert dropped[0] == 1
    assert app.store.booking_states("vyte") == {}


def test_full_rescan_prunes_past_retention(
    make_app: Callable[..., App], add_booking: AddBooking
) -> None:
    """A full rescan prunes, but never inside the lookback window."""
    add_booking(start=in_days(-20))
    app = make_app(snapshot_retention_days=1, lookback_days=30)
    app.sync()

    app.sync(Mode.FULL)

    assert len(app.store.booking_states("vyte")) == 1


def test_status_reports_freshness(app: App, add_booking: AddBooking) -> None:
    """Status gives the last complete run and how far behind the snapshot is."""
    add_booking()
    app.sync()

    data = collect_status(app.store)
    text = render_status(data)

    assert data["last_success_at"] is not None
    assert data["behind_seconds"] is not None
    assert data["behind_seconds"] < 60
    assert "Last finished run:" in text
    assert json.loads(json.dumps(data)) == data
