"""Logging: levels, JSON lines, library logs, and secrets masked everywhere.

The emulators here echo the credentials they receive in error responses, the
way a misbehaving gateway might, so that every secret reaches a log message,
an extra field or a traceback, and the tests check that none is printed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loguru import logger

from bookingsync.app import App
from bookingsync.engine.sync import Mode
from bookingsync.errors import ApiError
from bookingsync.logs import REDACTED, InterceptHandler, configure_logging
from bookingsync.sandbox.faults import FaultAction, FaultRule
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import Application, EmulatorServer, Request, Response
from bookingsync.sandbox.vyte import VyteEmulator
from tests.conftest import PIPEDRIVE_TOKEN, VYTE_KEY, run_cli

AddBooking = Callable[..., dict[str, Any]]
CREDENTIAL_HEADERS = ("authorization", "x-api-token")


class EchoCredentials:
    """Wrap an emulator: the first ``times`` matching requests get an error
    that echoes the request's credentials, the rest are served normally."""

    def __init__(
        self,
        app: Application,
        method: str,
        path_prefix: str,
        status: int,
        times: int = 1,
    ) -> None:
        self.app = app
        self.method = method
        self.path_prefix = path_prefix
        self.status = status
        self.times = times
        self.echoed = 0

    def handle(self, request: Request) -> Response:
        matches = request.method == self.method and request.path.startswith(
            self.path_prefix
        )
        if not matches or self.echoed >= self.times:
            return self.app.handle(request)
        self.echoed += 1
        sent = ", ".join(
            f"{name}={request.headers[name]}"
            for name in CREDENTIAL_HEADERS
            if name in request.headers
        )
        if self.status >= 500:
            return Response(self.status, f"Bad gateway; request had {sent}".encode())
        return Response.json(self.status, {"error": f"Invalid request with {sent}"})


@pytest.fixture
def echoing_env(
    cli_env: dict[str, str],
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> Iterator[dict[str, str]]:
    """CLI environment whose emulators echo credentials in three errors.

    Vyte's event listing gets one 502 and Pipedrive's user listing one 502,
    both retried. The first two activity creates get a 400, which fails the
    booking after the engine's second try.
    """
    vyte_app = EchoCredentials(vyte_emulator, "GET", "/v2/events", 502)
    users_app = EchoCredentials(pipedrive_emulator, "GET", "/api/v1/users", 502)
    pipedrive_app = EchoCredentials(
        users_app, "POST", "/api/v2/activities", 400, times=2
    )
    with (
        EmulatorServer(vyte_app) as vyte,
        EmulatorServer(pipedrive_app) as pipedrive,
    ):
        cli_env["BOOKINGSYNC_VYTE_BASE_URL"] = vyte.url
        cli_env["BOOKINGSYNC_PIPEDRIVE_BASE_URL"] = pipedrive.url
        yield cli_env
    assert vyte_app.echoed == 1
    assert users_app.echoed == 1
    assert pipedrive_app.echoed == 2


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Send loguru back to its default stderr sink after a test configured it."""
    yield
    logger.remove()
    logger.add(sys.stderr)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, InterceptHandler):
            root.removeHandler(handler)


def json_records(stderr: str) -> list[dict[str, Any]]:
    """Parse each stderr line as one loguru JSON object and return the records.

    NOTE: `sync` also prints a plain-text summary line per failed booking
    ("failed: <booking>: <error>") to stderr, outside the logger, so those
    lines are skipped here.
    """
    lines = [line for line in stderr.splitlines() if line]
    return [
        json.loads(line)["record"] for line in lines if not line.startswith("failed: ")
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_debug_sync_prints_no_secret(
    echoing_env: dict[str, str], add_booking: AddBooking, log_format: str
) -> None:
    """A DEBUG sync whose errors echo both credentials prints neither of them."""
    add_booking([{"full_name": "A", "email": "a@acme.example"}])
    add_booking([{"full_name": "B", "email": "b@initech.example"}])

    result = run_cli(
        echoing_env, "--log-level", "DEBUG", "--log-format", log_format, "sync"
    )

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "HTTP Request:" in result.stderr
    assert REDACTED in result.stderr
    assert VYTE_KEY not in output
    assert PIPEDRIVE_TOKEN not in output


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
def test_logged_traceback_prints_no_secret(
    capfd: pytest.CaptureFixture[str],
    restore_logging: None,
    make_app: Callable[..., App],
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
    json_format: bool,
) -> None:
    """A traceback quoting secrets, in a chained exception too, is masked."""
    configure_logging("DEBUG", json_format=json_format)
    add_booking()
    app = make_app()
    app.sync(Mode.FULL)
    pipedrive.faults.add(
        FaultRule(FaultAction.STATUS, status=503, rate=1.0, path_prefix="/api/v1")
    )
    app.client._sleep = lambda _seconds: None  # noqa: SLF001 -- no backoff

    try:
        try:
            app.client.request("GET", f"/api/v1/users?echo={PIPEDRIVE_TOKEN}")
        except ApiError as exc:
            raise RuntimeError(f"sync crashed near {VYTE_KEY}") from exc
    except RuntimeError:
        logger.exception("Sync run crashed; the next run will retry")

    err = capfd.readouterr().err
    assert "Traceback" in err
    assert "RuntimeError" in err
    assert "TransientError" in err
    assert "HTTP 503" in err
    assert PIPEDRIVE_TOKEN not in err
    assert VYTE_KEY not in err


def test_json_lines_carry_booking_ids(
    cli_env: dict[str, str],
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """Each line is one JSON object, and changes, retries and failures carry ids."""
    first = add_booking([{"full_name": "A", "email": "a@acme.example"}])
    second = add_booking([{"full_name": "B", "email": "b@initech.example"}])
    pipedrive.faults.add(
        FaultRule(
            FaultAction.STATUS,
            status=503,
            nth=frozenset({1}),
            methods=frozenset({"GET"}),
        )
    )
    pipedrive.faults.add(
        FaultRule(
            FaultAction.STATUS,
            status=400,
            nth=frozenset({1, 2}),
            methods=frozenset({"POST"}),
            path_prefix="/api/v2/activities",
        )
    )

    result = run_cli(cli_env, "--log-format", "json", "sync")

    assert result.returncode == 1, result.stderr
    records = json_records(result.stderr)
    bookings = {f"vyte:{first['_id']}", f"vyte:{second['_id']}"}
    created = [r for r in records if r["message"].startswith("Created activity")]
    failed = [r for r in records if r["level"]["name"] == "ERROR"]
    warnings = [r for r in records if r["level"]["name"] == "WARNING"]
    retries = [r for r in warnings if "retrying" in r["message"]]
    assert len(created) == 1
    assert created[0]["level"]["name"] == "INFO"
    assert created[0]["extra"]["booking"] in bookings
    assert isinstance(created[0]["extra"]["activity_id"], int)
    assert len(failed) == 1
    assert failed[0]["extra"]["booking"] in bookings - {created[0]["extra"]["booking"]}
    assert "HTTP 400" in failed[0]["extra"]["error"]
    assert len(retries) == 1
    assert retries[0]["extra"]["attempt"] == 1
    assert any(r["extra"].get("booking") in bookings for r in warnings)


@pytest.mark.parametrize(
    ("level", "shown"), [("DEBUG", True), ("INFO", False)], ids=["debug", "info"]
)
def test_httpx_lines_only_when_debugging(
    cli_env: dict[str, str], add_booking: AddBooking, level: str, shown: bool
) -> None:
    add_booking()

    result = run_cli(cli_env, "--log-level", level, "sync")

    assert result.returncode == 0, result.stderr
    assert "Created activity" in result.stderr
    assert ("HTTP Request:" in result.stderr) is shown
    assert ("connect_tcp" in result.stderr) is shown


def test_info_line_per_change_names_ids(
    cli_env: dict[str, str], add_booking: AddBooking
) -> None:
    """The default text format logs each Pipedrive write with its ids."""
    event = add_booking()

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " in line]
    booking = f"vyte:{event['_id']}"
    for kind in ("organization", "person", "deal", "activity"):
        matching = [line for line in lines if f"Created {kind}" in line]
        assert len(matching) == 1, kind
        assert booking in matching[0]
