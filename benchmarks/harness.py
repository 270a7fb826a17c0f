"""Set-up shared by the benchmarks: emulators on 127.0.0.1, settings, events.

Every benchmark runs the real daemon code (``App.build``) against the sandbox
emulators over loopback HTTP, with a fresh SQLite database in a temporary
folder. Figures for Pipedrive come from the emulator's own accounting (its
request log and ``tokens_spent``), not from the client's estimate.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from loguru import logger

from bookingsync.app import App
from bookingsync.engine.sync import Mode, SyncReport
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject, build_event, parse_timestamp
from bookingsync.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
VYTE_KEY = "bench-vyte-key-7c1e"
PIPEDRIVE_TOKEN = "bench-pipedrive-token-5d02"
HOST_EMAIL = "sam.seller@oursales.example"
HOST_NAME = "Sam Seller"

# Company names and free-mail domains that generated bookers are drawn from.
FREE_MAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com")
PLACES = (
    ("Zoom", "https://zoom.us/j/{number}"),
    ("Google Meet", "https://meet.google.com/{code}"),
    ("Office", "12 rue de la Paix, 75002 Paris"),
    ("Phone call", None),
)
TITLES = ("Product demo", "Discovery call", "Onboarding session", "Pricing review")
MESSAGES = (
    "Looking forward to it.",
    "We would like to see the reporting module.\nThree of us will join.",
    None,
)


def isolate_environment() -> None:
    """Drop ``BOOKINGSYNC_*`` variables and keep the daemon's log quiet.

    The benchmark settings are passed explicitly, so a developer's own
    environment must not change them. Only warnings and errors are logged,
    so logging to the terminal does not distort the timings.
    """
    for name in list(os.environ):
        if name.startswith("BOOKINGSYNC_") or name == "CREDENTIALS_DIRECTORY":
            del os.environ[name]
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")


def make_settings(
    workdir: Path, vyte_url: str, pipedrive_url: str, **overrides: Any
) -> Settings:
    """Build settings for a sandbox run, with the state database in ``workdir``.

    An empty TOML file is passed as the config file, so an installed
    ``/etc/bookingsync/bookingsync.toml`` cannot leak into the benchmark.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "bench.toml"
    config_file.touch()
    values: dict[str, Any] = {
        "vyte_api_key": VYTE_KEY,
        "vyte_base_url": vyte_url,
        "pipedrive_api_token": PIPEDRIVE_TOKEN,
        "pipedrive_base_url": pipedrive_url,
        "database_url": f"sqlite:///{workdir / 'bookingsync.db'}",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return load_settings(config_file, **values)


@dataclass(frozen=True)
class SyncCost:
    """The cost of one sync pass, as the emulators counted it."""

    requests: int
    tokens: int
    searches: int
    writes: int
    rate_limited: int
    vyte_requests: int
    wall_seconds: float
    by_endpoint: Counter[str] = field(default_factory=Counter)

    def describe_requests(self) -> str:
        """Return the requests grouped by method and endpoint, largest first."""
        parts = [f"{count} {name}" for name, count in self.by_endpoint.most_common()]
        return ", ".join(parts) or "none"


def endpoint_name(method: str, path: str) -> str:
    """Return ``METHOD /path`` with numeric ids replaced by ``{id}``."""
    segments = ["{id}" if part.isdigit() else part for part in path.split("/")]
    return f"{method} {'/'.join(segments)}"


class RecordingTransport(httpx.BaseTransport):
    """An httpx transport that times requests and notes rate-limit headers.

    Passed to ``App.build``, it shows where a run's wall time goes: waiting
    for responses, or elsewhere (the daemon's own work and its pacing).
    """

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.requests = 0
        self.seconds = 0.0
        # Responses that said the burst window is used up, and the seconds
        # their x-ratelimit-reset header asked the client to wait.
        self.window_exhausted = 0
        self.reset_seconds = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = self._inner.handle_request(request)
        self.seconds += time.perf_counter() - started
        self.requests += 1
        if response.headers.get("x-ratelimit-remaining") == "0":
            self.window_exhausted += 1
            self.reset_seconds += float(response.headers.get("x-ratelimit-reset", 0))
        return response

    def close(self) -> None:
        self._inner.close()


class EmulatorProcess:
    """``benchmarks.serve`` running in a child process, with its spec.

    Use it as a context manager. ``ready`` contains the URLs and ids it printed.
    """

    def __init__(self, workdir: Path, spec: dict[str, Any]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        spec_file = workdir / "serve.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", str(spec_file)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read_line()

    def stats(self) -> dict[str, Any]:
        """Return the Pipedrive emulator's tokens spent and request counts."""
        if self._process.stdin is None:
            raise RuntimeError("benchmarks.serve has no standard input")
        self._process.stdin.write("stats\n")
        self._process.stdin.flush()
        return self._read_line()

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=60)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_line(self) -> dict[str, Any]:
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line:
            self._process.kill()
            raise RuntimeError(
                f"benchmarks.serve exited with status {self._process.wait()}"
            )
        result: dict[str, Any] = json.loads(line)
        return result


@dataclass
class Sandbox:
    """Both emulators served on loopback and a daemon pointed at them."""

    vyte: VyteEmulator
    vyte_server: EmulatorServer
    pipedrive: PipedriveEmulator
    pipedrive_server: EmulatorServer
    host_id: str
    app: App

    def sync(self, mode: Mode = Mode.POLL) -> tuple[SyncReport, SyncCost]:
        """Run one sync pass and return its report and what it cost."""
        pipedrive_seen = len(self.pipedrive_server.requests)
        vyte_seen = len(self.vyte_server.requests)
        tokens_before = self.pipedrive.tokens_spent
        started = time.perf_counter()
        report = self.app.sync(mode, trigger="benchmark")
        wall = time.perf_counter() - started
        served = self.pipedrive_server.requests[pipedrive_seen:]
        by_endpoint = Counter(endpoint_name(r.method, r.path) for r in served)
        cost = SyncCost(
            requests=len(served),
            tokens=self.pipedrive.tokens_spent - tokens_before,
            searches=sum(1 for r in served if r.path.endswith("/search")),
            writes=sum(1 for r in served if r.method not in ("GET", "HEAD")),
            rate_limited=sum(1 for r in served if r.status == 429),
            vyte_requests=len(self.vyte_server.requests) - vyte_seen,
            wall_seconds=wall,
            by_endpoint=by_endpoint,
        )
        return report, cost

    def add_booking(
        self, booker: dict[str, str], start: datetime, **options: Any
    ) -> JsonObject:
        """Add a confirmed booking-page event with one booker; return it."""
        event = booking_event(self.host_id, [booker], start, **options)
        self.vyte.add_event(event)
        return event


@contextmanager
def sandbox(
    workdir: Path,
    *,
    burst_limit: int | None = None,
    daily_token_budget: int | None = None,
    vyte_options: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[Sandbox]:
    """Start both emulators on 127.0.0.1 and build the daemon against them.

    ``burst_limit`` and ``daily_token_budget`` configure the Pipedrive
    emulator; ``settings`` override the daemon's settings. Without a burst
    limit the daemon paces itself at 1,000 requests per 2 s, which the
    emulator does not enforce.
    """
    vyte = VyteEmulator(api_key=VYTE_KEY, **(vyte_options or {}))
    host_id = vyte.add_user(HOST_NAME, HOST_EMAIL)
    pipedrive = PipedriveEmulator(
        token=PIPEDRIVE_TOKEN,
        burst_limit=burst_limit,
        daily_token_budget=daily_token_budget,
    )
    pipedrive.add_user(HOST_NAME, HOST_EMAIL)
    settings.setdefault("pipedrive_burst_limit", burst_limit or 1000)
    with EmulatorServer(vyte) as vyte_server, EmulatorServer(pipedrive) as pd_server:
        app = App.build(
            make_settings(workdir, vyte_server.url, pd_server.url, **settings)
        )
        try:
            yield Sandbox(vyte, vyte_server, pipedrive, pd_server, host_id, app)
        finally:
            app.close()


def reschedule_later(vyte: VyteEmulator, event_ids: list[str]) -> None:
    """Move each event's confirmed slot one day later, as its host would."""
    for event_id in event_ids:
        event = vyte.events[event_id]
        date_id = event["confirmed"]["date_id"]
        slot = next(d for d in event["dates"] if d["_id"] == date_id)
        start = parse_timestamp(slot["date"]) + timedelta(days=1)
        end = parse_timestamp(slot["end_date"]) + timedelta(days=1)
        vyte.reschedule(event_id, start, end)


def in_days(days: float, hour: int = 9, minute: int = 0) -> datetime:
    """Return a UTC time ``days`` from now at the given hour and minute."""
    base = datetime.now(UTC) + timedelta(days=days)
    return base.replace(hour=hour, minute=minute, second=0, microsecond=0)


def booking_event(
    host_id: str,
    bookers: list[dict[str, str]],
    start: datetime,
    *,
    minutes: int = 30,
    title: str = "Product demo",
    place: tuple[str, str | None] | None = ("Zoom", "https://zoom.us/j/4155550123"),
    message: str | None = "Looking forward to it.",
    extra_slots: int = 0,
) -> JsonObject:
    """Build a confirmed booking-page event as Vyte's reference shapes it.

    The first slot is the confirmed one; ``extra_slots`` adds proposed slots
    that were not chosen, as in Vyte's examples.
    """
    slots = [
        (start + timedelta(days=day), start + timedelta(days=day, minutes=minutes))
        for day in range(extra_slots + 1)
    ]
    place_name, place_address = place if place else (None, None)
    return build_event(
        host_email=HOST_EMAIL,
        host_name=HOST_NAME,
        host_user_id=host_id,
        title=title,
        slots=slots,
        invitees=bookers,
        place_name=place_name,
        place_address=place_address,
        message=message,
    )


def varied_event(
    host_id: str, rng: random.Random, booker: int, company: int
) -> JsonObject:
    """Build one event of a generated organization's history.

    ``booker`` and ``company`` number the person who booked and their
    company; a booker keeps the same email, phone and company across events.
    Places, messages, colleagues invited along and the number of proposed
    slots are drawn from ``rng``, so the listing has the spread of sizes that
    a real one has. Every event is a confirmed booking within the next 60
    days, so the daemon tracks all of them.
    """
    bookers = [booker_invitee(booker, company)]
    if rng.random() < 0.2:
        bookers.append(
            {
                "full_name": f"Colleague of {booker}",
                "email": f"colleague{booker}@company{company}.example",
            }
        )
    place_name, address = rng.choice(PLACES)
    if address is not None:
        address = address.format(number=rng.randrange(10**9, 10**10), code=booker)
    start = in_days(rng.uniform(0.5, 60), hour=rng.randrange(7, 17))
    return booking_event(
        host_id,
        bookers,
        start,
        minutes=rng.choice((15, 30, 45, 60)),
        title=rng.choice(TITLES),
        place=(place_name, address),
        message=rng.choice(MESSAGES),
        extra_slots=rng.choice((0, 0, 1, 2)),
    )


def booker_invitee(booker: int, company: int) -> dict[str, str]:
    """Return the invitee entry of booker number ``booker``.

    About 15% of bookers use a free-mail address, and every other company
    fills in its name on the booking page.
    """
    traits = random.Random(booker)
    if traits.random() < 0.15:
        domain = traits.choice(FREE_MAIL_DOMAINS)
        invitee = {"full_name": f"Guest {booker}", "email": f"guest{booker}@{domain}"}
    else:
        invitee = {
            "full_name": f"Booker {booker}",
            "email": f"booker{booker}@company{company}.example",
        }
        if company % 2 == 0:
            invitee["company"] = f"Company {company} Ltd"
    if traits.random() < 0.4:
        invitee["phone"] = f"+33 1 {traits.randrange(10**7, 10**8)}"
    return invitee
