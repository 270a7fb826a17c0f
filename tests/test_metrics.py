"""The Prometheus metrics file, parsed as node_exporter's textfile collector would."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from bookingsync.app import App
from bookingsync.errors import ConfigurationError
from bookingsync.sandbox.faults import FaultAction, FaultRule
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.settings import Settings
from tests.conftest import run_cli

AddBooking = Callable[..., dict[str, Any]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read_samples(path: Path) -> Samples:
    """Parse the file and return every sample by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics_path(tmp_path: Path) -> Path:
    folder = tmp_path / "textfile"
    folder.mkdir()
    return folder / "bookingsync.prom"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Collect "LEVEL message" for every log record while the test runs."""
    lines: list[str] = []
    handler = logger.add(
        lambda message: lines.append(message.strip()),
        level="DEBUG",
        format="{level} {message}",
    )
    yield lines
    logger.remove(handler)


def test_metrics_after_two_runs(
    make_app: Callable[..., App],
    metrics_path: Path,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """Two runs in one process add up in every counter."""
    app = make_app(metrics_file=metrics_path)
    add_booking([{"full_name": "A", "email": "a@acme.example"}])
    first = app.sync()
    add_booking([{"full_name": "B", "email": "b@initech.example"}])
    second = app.sync()

    samples = read_samples(metrics_path)
    assert first.run is not None
    assert second.run is not None
    assert second.run.finished_at is not None
    assert value(samples, "bookingsync_runs_total", outcome="ok") == 2
    assert value(samples, "bookingsync_bookings_synced_total", change="created") == 2
    assert value(samples, "bookingsync_bookings_synced_total", change="updated") == 0
    assert value(samples, "bookingsync_bookings_synced_total", change="cancelled") == 0
    assert value(samples, "bookingsync_bookings_failed_total") == 0
    assert value(samples, "bookingsync_bookings_failing") == 0
    requests = value(
        samples, "bookingsync_pipedrive_requests_total", status_class="2xx"
    )
    assert requests == len(pipedrive.requests)
    tokens = value(samples, "bookingsync_pipedrive_tokens_total")
    assert tokens == first.run.tokens + second.run.tokens
    assert tokens > 0
    last_success = value(samples, "bookingsync_last_success_timestamp_seconds")
    assert last_success == pytest.approx(second.run.finished_at.timestamp())
    duration = value(samples, "bookingsync_last_run_duration_seconds")
    expected = (second.run.finished_at - second.run.started_at).total_seconds()
    assert duration == pytest.approx(expected)


def test_metrics_accumulate_across_cli_syncs(
    cli_env: dict[str, str],
    metrics_path: Path,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """Each one-shot `sync` continues the counters of the previous one."""
    cli_env["BOOKINGSYNC_METRICS_FILE"] = str(metrics_path)
    add_booking([{"full_name": "A", "email": "a@acme.example"}])
    assert run_cli(cli_env, "sync").returncode == 0
    add_booking([{"full_name": "B", "email": "b@initech.example"}])

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    samples = read_samples(metrics_path)
    assert value(samples, "bookingsync_runs_total", outcome="ok") == 2
    assert value(samples, "bookingsync_bookings_synced_total", change="created") == 2
    requests = value(
        samples, "bookingsync_pipedrive_requests_total", status_class="2xx"
    )
    assert requests == len(pipedrive.requests)


def test_metrics_seeded_from_run_history(
    make_app: Callable[..., App],
    metrics_path: Path,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """Metrics switched on later start from the runs already recorded."""
    add_booking([{"full_name": "A", "email": "a@acme.example"}])
    make_app().sync()
    pipedrive.clear_log()
    add_booking([{"full_name": "B", "email": "b@initech.example"}])

    make_app(metrics_file=metrics_path).sync()

    samples = read_samples(metrics_path)
    assert value(samples, "bookingsync_runs_total", outcome="ok") == 2
    assert value(samples, "bookingsync_bookings_synced_total", change="created") == 2
    # Responses are not in the run history, so only the second run's count.
    requests = value(
        samples, "bookingsync_pipedrive_requests_total", status_class="2xx"
    )
    assert requests == len(pipedrive.requests)


def test_metrics_count_failed_booking(
    make_app: Callable[..., App],
    metrics_path: Path,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """A rejected booking shows as a failure, a 4xx and a partial run."""
    pipedrive.faults.add(
        FaultRule(
            FaultAction.STATUS,
            status=400,
            nth=frozenset({1, 2}),
            methods=frozenset({"POST"}),
            path_prefix="/api/v2/activities",
        )
    )
    add_booking()

    report = make_app(metrics_file=metrics_path).sync()

    assert len(report.failed) == 1
    samples = read_samples(metrics_path)
    assert value(samples, "bookingsync_runs_total", outcome="partial") == 1
    assert value(samples, "bookingsync_bookings_failed_total") == 1
    assert value(samples, "bookingsync_bookings_failing") == 1
    assert (
        value(samples, "bookingsync_pipedrive_requests_total", status_class="4xx") == 2
    )
    assert value(samples, "bookingsync_last_success_timestamp_seconds") is not None


def test_metrics_stopped_run_is_no_success(
    make_app: Callable[..., App],
    metrics_path: Path,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    pipedrive.faults.add(FaultRule(FaultAction.STATUS, status=401, rate=1.0))
    add_booking()

    report = make_app(metrics_file=metrics_path).sync()

    assert report.stopped is not None
    samples = read_samples(metrics_path)
    assert value(samples, "bookingsync_runs_total", outcome="stopped") == 1
    assert value(samples, "bookingsync_last_success_timestamp_seconds") is None
    assert value(samples, "bookingsync_last_run_duration_seconds") is not None


def test_metrics_dry_run_not_counted_as_run(
    make_app: Callable[..., App], metrics_path: Path, add_booking: AddBooking
) -> None:
    add_booking()

    make_app(metrics_file=metrics_path).sync(dry_run=True)

    samples = read_samples(metrics_path)
    assert not [key for key in samples if key[0] == "bookingsync_runs_total"]
    assert value(samples, "bookingsync_bookings_synced_total", change="created") == 0
    assert value(samples, "bookingsync_last_success_timestamp_seconds") is None


def test_metrics_file_replaced_and_readable(
    make_app: Callable[..., App], metrics_path: Path, add_booking: AddBooking
) -> None:
    """The file is world-readable and no temporary file is left beside it."""
    app = make_app(metrics_file=metrics_path)
    add_booking()
    app.sync()
    app.sync()

    assert stat.S_IMODE(metrics_path.stat().st_mode) == 0o644
    assert [path.name for path in metrics_path.parent.iterdir()] == [metrics_path.name]


def test_metrics_write_failure_logged_once(
    make_app: Callable[..., App],
    metrics_path: Path,
    add_booking: AddBooking,
    log_lines: list[str],
) -> None:
    """An unwritable file does not fail the run, and its error is logged once."""
    app = make_app(metrics_file=metrics_path)
    metrics_path.parent.rmdir()
    add_booking()

    first = app.sync()
    second = app.sync()

    assert first.ok
    assert second.ok
    errors = [line for line in log_lines if line.startswith("ERROR")]
    assert len(errors) == 1
    assert f"Writing the metrics file {metrics_path} failed" in errors[0]


def test_metrics_off_without_setting(app: App, add_booking: AddBooking) -> None:
    add_booking()

    app.sync()

    assert app.metrics is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("textfile/bookingsync.txt", "must end in .prom"),
        ("missing/bookingsync.prom", "does not exist"),
    ],
    ids=["suffix", "missing-directory"],
)
def test_metrics_file_setting_checked(
    make_settings: Callable[..., Settings],
    metrics_path: Path,
    name: str,
    problem: str,
) -> None:
    path = metrics_path.parent.parent / name

    with pytest.raises(ConfigurationError) as caught:
        make_settings(metrics_file=path)

    assert "BOOKINGSYNC_METRICS_FILE is invalid" in str(caught.value)
    assert problem in str(caught.value)
