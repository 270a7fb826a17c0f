"""The command line and the daemon, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import build_event
from tests.conftest import HOST_EMAIL, run_cli

AddBooking = Callable[..., dict[str, Any]]


def test_cli_sync_exit_zero_when_all_applied(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """`bookingsync sync` applies the bookings and exits 0."""
    add_booking()

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    assert len(pipedrive_emulator.live("activities")) == 1


def test_cli_sync_exit_one_when_a_booking_fails(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """One invalid event gives exit 1, names the event, and the rest syncs."""
    broken = add_booking([{"full_name": "A", "email": "a@acme.example"}])
    vyte_emulator.events[broken["_id"]]["dates"][0]["end_date"] = (
        "2000-01-01T00:00:00.000Z"
    )
    add_booking([{"full_name": "B", "email": "b@initech.example"}])

    result = run_cli(cli_env, "sync")

    assert result.returncode == 1
    assert broken["_id"] in result.stderr
    assert "before it starts" in result.stderr
    assert len(pipedrive_emulator.live("activities")) == 1


def test_cli_dry_run_prints_plan_writes_nothing(
    cli_env: dict[str, str], add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """`sync --dry-run` lists the planned create and sends Pipedrive nothing."""
    add_booking(title="Dry demo")

    result = run_cli(cli_env, "sync", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "create" in result.stdout
    assert "Dry demo" in result.stdout
    assert pipedrive.requests == []


def test_cli_config_error_exit_two(cli_env: dict[str, str]) -> None:
    """An invalid setting stops the command with exit 2 and names the variable."""
    cli_env["BOOKINGSYNC_POLL_INTERVAL"] = "often"

    result = run_cli(cli_env, "sync")

    assert result.returncode == 2
    assert "BOOKINGSYNC_POLL_INTERVAL" in result.stderr


def test_cli_status_json_lists_runs_and_failures(
    cli_env: dict[str, str], add_booking: AddBooking, vyte_emulator: VyteEmulator
) -> None:
    """`status --json` reports the run and the failing booking with its error."""
    broken = add_booking()
    vyte_emulator.events[broken["_id"]]["confirmed"]["date_id"] = "f" * 24
    run_cli(cli_env, "sync")

    result = run_cli(cli_env, "status", "--json")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runs"][0]["outcome"] == "partial"
    assert data["failing"][0]["booking"] == f"vyte:{broken['_id']}"
    assert "matches no entry in dates" in data["failing"][0]["error"]


def test_cli_status_table_readable(
    cli_env: dict[str, str], add_booking: AddBooking
) -> None:
    """`status` prints the last runs as a table."""
    add_booking()
    run_cli(cli_env, "sync")

    result = run_cli(cli_env, "status")

    assert "Last runs:" in result.stdout
    assert "ok" in result.stdout
    assert "Failing bookings: none" in result.stdout


def test_cli_check_reaches_both_apis(cli_env: dict[str, str]) -> None:
    """`check` reports both APIs reachable."""
    result = run_cli(cli_env, "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vyte: ok" in result.stdout
    assert "Pipedrive: ok" in result.stdout


def test_cli_check_names_rejected_credential(cli_env: dict[str, str]) -> None:
    """A wrong Pipedrive token fails `check` and names the setting to fix."""
    cli_env["BOOKINGSYNC_PIPEDRIVE_API_TOKEN"] = "wrong-token-value"

    result = run_cli(cli_env, "check")

    assert result.returncode == 4
    assert "BOOKINGSYNC_PIPEDRIVE_API_TOKEN" in result.stdout
    assert "wrong-token-value" not in result.stdout + result.stderr


@pytest.mark.parametrize("host_tz", ["UTC", "Europe/Paris", "Pacific/Auckland"])
def test_cli_times_independent_of_host_zone(
    host_tz: str,
    cli_env: dict[str, str],
    vyte_emulator: VyteEmulator,
    host_id: str,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Meetings either side of a DST change land at the right UTC time."""
    paris = ZoneInfo("Europe/Paris")
    cases = {
        "before DST": datetime(2027, 3, 27, 9, 0, tzinfo=paris),  # CET, UTC+1
        "after DST": datetime(2027, 3, 29, 9, 0, tzinfo=paris),  # CEST, UTC+2
        "autumn": datetime(2027, 10, 31, 9, 0, tzinfo=paris),  # back to CET
    }
    for title, start in cases.items():
        vyte_emulator.add_event(
            build_event(
                host_email=HOST_EMAIL,
                host_name="Sam Seller",
                host_user_id=host_id,
                title=title,
                slots=[(start, start.replace(minute=30))],
                invitees=[{"full_name": "Jane", "email": "jane@acme.example"}],
            )
        )
    cli_env["TZ"] = host_tz

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    by_subject = {a["subject"]: a for a in pipedrive_emulator.live("activities")}
    assert by_subject["before DST"]["due_time"] == "08:00:00"
    assert by_subject["after DST"]["due_time"] == "07:00:00"
    assert by_subject["autumn"]["due_time"] == "08:00:00"
    assert by_subject["after DST"]["due_date"] == "2027-03-29"
    assert "2027-03-29 09:00–09:30 Europe/Paris" in by_subject["after DST"]["note"]


def test_cli_all_day_local_date_in_auckland(
    cli_env: dict[str, str],
    vyte_emulator: VyteEmulator,
    host_id: str,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """An all-day slot encoded as local midnight keeps its Auckland date."""
    auckland = ZoneInfo("Pacific/Auckland")
    start = datetime(2027, 1, 15, 0, 0, tzinfo=auckland)  # 2027-01-14T11:00Z
    vyte_emulator.add_event(
        build_event(
            host_email=HOST_EMAIL,
            host_name="Sam Seller",
            host_user_id=host_id,
            title="Workshop day",
            slots=[(start, start.replace(day=16))],
            invitees=[{"full_name": "Kiri", "email": "kiri@kiwi.example"}],
            timezone="Pacific/Auckland",
            all_day=True,
        )
    )
    cli_env["TZ"] = "America/Los_Angeles"

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    activity = pipedrive_emulator.live("activities")[0]
    assert activity["due_date"] == "2027-01-15"
    assert activity["due_time"] is None


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_count(env: dict[str, str]) -> int:
    result = run_cli(env, "status", "--json")
    if result.returncode != 0:
        return -1
    return sum(1 for run in json.loads(result.stdout)["runs"] if run["finished_at"])


def test_daemon_sigusr1_burst_runs_once_and_sigterm_exits_zero(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A burst of SIGUSR1 makes one extra run; SIGTERM exits 0."""
    add_booking()
    cli_env["BOOKINGSYNC_POLL_INTERVAL"] = "3600"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bookingsync", "--config", os.devnull, "run"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: run_count(cli_env) == 1)
        assert len(pipedrive_emulator.live("activities")) == 1
        for _ in range(5):
            daemon.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: run_count(cli_env) >= 2)
        time.sleep(1.5)
        assert run_count(cli_env) == 2
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _out, err = daemon.communicate(timeout=10)
        print(err)  # Shown by pytest when the test fails.


def test_daemon_job_options_guard_overlap() -> None:
    """Every sync job has max_instances 1, coalescing and a long grace time."""
    from bookingsync.daemon.service import job_options

    options = job_options(60)

    assert options["max_instances"] == 1
    assert options["coalesce"] is True
    assert options["misfire_grace_time"] == 60


@pytest.mark.parametrize(
    "url",
    ["notaurl", "mysql://user@127.0.0.1:1/db", "sqlite:////proc/forbidden/x.db"],
    ids=["not-a-url", "driver-missing", "unwritable"],
)
def test_cli_bad_database_url_exit_two(cli_env: dict[str, str], url: str) -> None:
    """An unusable database URL is a configuration error, not a traceback."""
    cli_env["BOOKINGSYNC_DATABASE_URL"] = url

    result = run_cli(cli_env, "sync")

    assert result.returncode == 2
    assert "BOOKINGSYNC_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_status_without_database_creates_nothing(
    cli_env: dict[str, str], tmp_path: Any
) -> None:
    """`status` on a missing SQLite file reports it and creates no file."""
    target = tmp_path / "absent" / "state.db"
    cli_env["BOOKINGSYNC_DATABASE_URL"] = f"sqlite:///{target}"

    result = run_cli(cli_env, "status")

    assert result.returncode == 2
    assert "no state database" in result.stderr
    assert not target.parent.exists()


def test_cli_skipped_event_reason_logged(
    cli_env: dict[str, str],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    host_id: str,
) -> None:
    """An event with only the organizer is skipped with its reason logged."""
    start = datetime(2027, 5, 3, 9, 0, tzinfo=ZoneInfo("UTC"))
    vyte_emulator.add_event(
        build_event(
            host_email=HOST_EMAIL,
            host_name="Sam Seller",
            host_user_id=host_id,
            title="Solo",
            slots=[(start, start.replace(minute=30))],
            invitees=[],
        )
    )
    add_booking()

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    assert "skipped: has no invitee other than the organizer" in result.stderr
