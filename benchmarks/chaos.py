"""Chaos benchmark: sync bookings through faulty APIs while killing the daemon.

Both emulators run in this process on 127.0.0.1. The Pipedrive emulator
replies 503 to 10% of requests and 429 (``Retry-After: 1``) to 5%, and it
delays 2% of its replies past the daemon's read timeout, so the daemon times
out although Pipedrive applied the request. Some Vyte GETs fail too.
``bookingsync sync`` runs as a subprocess and is SIGKILLed at random moments:
either a random time after it starts, or right after Pipedrive applied a
random number of its writes and before the reply leaves. After the last kill,
``bookingsync retry`` (which makes recorded failures due at once) runs, with
the faults still on, until two runs in a row exit 0 with no failing booking.

Then Pipedrive's content is checked: each booking needs exactly one activity
carrying its marker, and no person, organization or open deal may exist twice.

Run it as ``python -m benchmarks.chaos`` from the repository root; ``--help``
lists the options. A full run writes its figures to ``docs/chaos.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from bookingsync.engine.mapping import MARKER_PREFIX
from bookingsync.sandbox.faults import FaultAction, FaultRule
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer, Request, Response
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject, build_event

VYTE_KEY = "chaos-vyte-key-3b7d"
PIPEDRIVE_TOKEN = "chaos-pipedrive-token-90fe"
HOST_EMAIL = "sam.seller@oursales.example"
HOST_NAME = "Sam Seller"
DOC_PATH = Path("docs/chaos.md")

BURST_LIMIT = 40
DAILY_TOKEN_BUDGET = 50_000_000
READ_TIMEOUT_SECONDS = 1.0
DELAY_SECONDS = 1.5
SERVER_ERROR_SHARE = 0.10
RATE_LIMITED_SHARE = 0.05
TIMEOUT_SHARE = 0.02
VYTE_ERROR_SHARE = 0.05
VYTE_TIMEOUT_SHARE = 0.02

# A kill by time lands at a random moment in this window after the start. A
# kill by writes lands after a random number of applied writes in this range.
KILL_DELAY_SECONDS = (0.5, 12.0)
KILL_AFTER_WRITES = (1, 120)
# Mean wait per request caused by the faults: a 503 backs off 0.375 s on
# average (bookingsync.http.backoff_delay for a first retry), a 429 waits its
# Retry-After, a delayed reply costs the read timeout plus about one backoff.
EXPECTED_WAIT_SECONDS = (
    SERVER_ERROR_SHARE * 0.375
    + RATE_LIMITED_SHARE * 1.0
    + TIMEOUT_SHARE * (READ_TIMEOUT_SECONDS + 0.375)
)
MAX_CONVERGENCE_RUNS = 30
RUN_TIMEOUT_SECONDS = 1200

MARKER_PATTERN = re.compile(re.escape(MARKER_PREFIX) + r"vyte:([0-9a-f]{24})</p>")
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.fr")
TITLES = ("Product demo", "Discovery call", "Onboarding", "Pricing review")


# Seeding -------------------------------------------------------------------


@dataclass
class Booker:
    full_name: str
    email: str
    company: str | None = None

    def invitee(self) -> dict[str, str]:
        entry = {"full_name": self.full_name, "email": self.email}
        if self.company:
            entry["company"] = self.company
        return entry


def new_booker(index: int, rng: random.Random) -> Booker:
    """Return a company booker (most of them) or a free-mail booker."""
    if rng.random() < 0.25:
        domain = rng.choice(FREE_MAIL)
        return Booker(f"Guest {index}", f"guest.{index}@{domain}")
    company = rng.randrange(150)
    booker = Booker(f"Booker {index}", f"booker{index}@company{company}.example")
    if rng.random() < 0.5:
        booker.company = f"Company {company} SAS"
    return booker


def seed_bookings(
    vyte: VyteEmulator, host_id: str, count: int, rng: random.Random
) -> list[JsonObject]:
    """Add ``count`` confirmed bookings: new and returning bookers, some groups.

    About one booking in five comes from a booker seen before, and one in
    seven invites colleagues of the booker's company as well.
    """
    seen: list[Booker] = []
    events = []
    for index in range(count):
        if seen and rng.random() < 0.2:
            booker = rng.choice(seen)
        else:
            booker = new_booker(index, rng)
            seen.append(booker)
        invitees = [booker.invitee()]
        if rng.random() < 0.15 and not booker.email.endswith(FREE_MAIL):
            domain = booker.email.split("@")[1]
            for guest in range(rng.randint(1, 3)):
                name = f"Colleague {index}-{guest}"
                invitees.append(
                    {"full_name": name, "email": f"c{index}.{guest}@{domain}"}
                )
        event = booking_event(host_id, invitees, rng)
        vyte.add_event(event)
        events.append(event)
    return events


def booking_event(
    host_id: str, invitees: list[dict[str, str]], rng: random.Random
) -> JsonObject:
    day = datetime.now(UTC) + timedelta(days=rng.uniform(1, 60))
    start = day.replace(hour=rng.randrange(7, 18), minute=0, second=0, microsecond=0)
    return build_event(
        host_email=HOST_EMAIL,
        host_name=HOST_NAME,
        host_user_id=host_id,
        title=rng.choice(TITLES),
        slots=[(start, start + timedelta(minutes=rng.choice((15, 30, 45, 60))))],
        invitees=invitees,
        place_name="Zoom",
        place_address=f"https://zoom.example/j/{rng.randrange(10**9, 10**10)}",
        message=rng.choice((None, "Looking forward to it.")),
    )


# Faults and kills ----------------------------------------------------------


def add_faults(pipedrive: EmulatorServer, vyte: EmulatorServer) -> list[FaultRule]:
    """Add the fault rules and return them, to read how often each fired.

    The first rule that fires wins, so each later rate is divided by the
    share the earlier rules leave, to give each fault its nominal share.
    """
    left_after_503 = 1 - SERVER_ERROR_SHARE
    left_after_429 = left_after_503 - RATE_LIMITED_SHARE
    rules = [
        pipedrive.faults.add(
            FaultRule(FaultAction.STATUS, status=503, rate=SERVER_ERROR_SHARE)
        ),
        pipedrive.faults.add(
            FaultRule(
                FaultAction.STATUS,
                status=429,
                rate=RATE_LIMITED_SHARE / left_after_503,
                retry_after="1",
            )
        ),
        pipedrive.faults.add(
            FaultRule(
                FaultAction.DELAY_AFTER,
                rate=TIMEOUT_SHARE / left_after_429,
                delay_seconds=DELAY_SECONDS,
            )
        ),
    ]
    vyte_gets = frozenset({"GET"})
    rules.append(
        vyte.faults.add(
            FaultRule(FaultAction.STATUS, rate=VYTE_ERROR_SHARE, methods=vyte_gets)
        )
    )
    rules.append(
        vyte.faults.add(
            FaultRule(
                FaultAction.DELAY_AFTER,
                rate=VYTE_TIMEOUT_SHARE / (1 - VYTE_ERROR_SHARE),
                delay_seconds=DELAY_SECONDS,
                methods=vyte_gets,
            )
        )
    )
    return rules


class Killer:
    """SIGKILL the running sync after a delay or after N applied writes."""

    def __init__(self, pipedrive: EmulatorServer) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._writes_left = 0
        self.killed = False
        pipedrive.on_handled = self._on_handled

    def arm(self, process: subprocess.Popen[bytes], writes: int) -> None:
        with self._lock:
            self._process = process
            self._writes_left = writes
            self.killed = False

    def disarm(self) -> None:
        with self._lock:
            self._process = None

    def kill(self) -> None:
        with self._lock:
            self._kill_locked()

    def _kill_locked(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self.killed = True
            self._process = None

    def _on_handled(self, request: Request, response: Response) -> None:
        if request.method == "GET" or response.status >= 300:
            return
        with self._lock:
            if self._process is None or self._writes_left <= 0:
                return
            self._writes_left -= 1
            if self._writes_left == 0:
                # The write is applied, and its reply is not sent yet.
                self._kill_locked()


def ignore_disconnects(server: EmulatorServer) -> None:
    """Stop printing tracebacks for replies to a client that went away.

    Killed and timed-out clients close their sockets, so the emulator's late
    replies fail with ``BrokenPipeError`` by design in this benchmark.
    """
    http_server = server._server  # noqa: SLF001 -- no public hook for this
    report_error = http_server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            report_error(request, client_address)

    http_server.handle_error = handle_error  # type: ignore[method-assign]


# Running the daemon --------------------------------------------------------


@dataclass
class RunLog:
    """The exit statuses of every sync, and how each kill was placed."""

    exits: Counter[int] = field(default_factory=Counter)
    kills_by_time: int = 0
    kills_by_writes: int = 0
    convergence_runs: int = 0

    @property
    def kills(self) -> int:
        return self.kills_by_time + self.kills_by_writes


class Daemon:
    """Start ``bookingsync`` subprocesses against the emulators."""

    def __init__(self, workdir: Path, vyte_url: str, pipedrive_url: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / "bookingsync.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKINGSYNC_")}
        env.update(
            {
                "BOOKINGSYNC_VYTE_API_KEY": VYTE_KEY,
                "BOOKINGSYNC_VYTE_BASE_URL": vyte_url,
                "BOOKINGSYNC_PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
                "BOOKINGSYNC_PIPEDRIVE_BASE_URL": pipedrive_url,
                "BOOKINGSYNC_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
                "BOOKINGSYNC_PIPEDRIVE_BURST_LIMIT": str(BURST_LIMIT),
                "BOOKINGSYNC_HTTP_READ_TIMEOUT": str(READ_TIMEOUT_SECONDS),
                "BOOKINGSYNC_VYTE_PAGE_LIMIT": "100000",
                "BOOKINGSYNC_LOG_LEVEL": "WARNING",
                "STATE_DIRECTORY": str(workdir),
            }
        )
        self.env = env

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "bookingsync", "--config", os.devnull]
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [*command, *args], env=self.env, stdout=log, stderr=log
            )

    def run(self, *args: str) -> int:
        process = self.start(*args)
        return process.wait(timeout=RUN_TIMEOUT_SECONDS)

    def failing(self) -> list[dict[str, Any]]:
        """Return the failing bookings as ``bookingsync status --json`` lists them."""
        command = [sys.executable, "-m", "bookingsync", "--config", os.devnull]
        result = subprocess.run(
            [*command, "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        failing: list[dict[str, Any]] = json.loads(result.stdout)["failing"]
        return failing


def kill_phase(
    daemon: Daemon, killer: Killer, kills: int, rng: random.Random, log: RunLog
) -> None:
    """Start syncs and SIGKILL them until ``kills`` kills have landed."""
    for _ in range(kills * 3):
        if log.kills >= kills:
            return
        process = daemon.start("sync")
        by_writes = rng.random() < 0.5
        timer = None
        if by_writes:
            killer.arm(process, rng.randint(*KILL_AFTER_WRITES))
        else:
            killer.arm(process, 0)
            timer = threading.Timer(rng.uniform(*KILL_DELAY_SECONDS), killer.kill)
            timer.start()
        status = process.wait(timeout=RUN_TIMEOUT_SECONDS)
        if timer is not None:
            timer.cancel()
        killer.disarm()
        log.exits[status] += 1
        if status == -signal.SIGKILL:
            if by_writes:
                log.kills_by_writes += 1
            else:
                log.kills_by_time += 1
        logger.info(
            "sync exited {status}; {kills} kills so far", status=status, kills=log.kills
        )


def converge(daemon: Daemon, log: RunLog) -> bool:
    """Run ``bookingsync retry`` until two runs in a row leave nothing failing."""
    clean_in_a_row = 0
    while clean_in_a_row < 2 and log.convergence_runs < MAX_CONVERGENCE_RUNS:
        status = daemon.run("retry")
        log.convergence_runs += 1
        log.exits[status] += 1
        failing = daemon.failing()
        clean = status == 0 and not failing
        clean_in_a_row = clean_in_a_row + 1 if clean else 0
        logger.info(
            "retry exited {status}, {failing} failing bookings",
            status=status,
            failing=len(failing),
        )
    return clean_in_a_row == 2


# Counting ------------------------------------------------------------------


@dataclass
class Figures:
    bookings: int
    synced: int
    lost: int
    duplicate_activities: int
    duplicate_persons: int
    duplicate_organizations: int
    duplicate_open_deals: int
    wrong_times: int

    @property
    def duplicates(self) -> int:
        return (
            self.duplicate_activities
            + self.duplicate_persons
            + self.duplicate_organizations
            + self.duplicate_open_deals
        )


def extra(counts: Counter[Any]) -> int:
    """Return how many items exceed one per key."""
    return sum(count - 1 for count in counts.values() if count > 1)


def count_figures(pipedrive: PipedriveEmulator, events: list[JsonObject]) -> Figures:
    """Compare Pipedrive's live records with the seeded bookings."""
    activities: dict[str, list[dict[str, Any]]] = {}
    for activity in pipedrive.live("activities"):
        for booking_id in MARKER_PATTERN.findall(activity.get("note") or ""):
            activities.setdefault(booking_id, []).append(activity)
    synced = [event for event in events if event["_id"] in activities]
    persons = Counter(
        email["value"].strip().lower()
        for person in pipedrive.live("persons")
        for email in person["emails"][:1]
    )
    organizations = Counter(
        org["name"].strip().casefold() for org in pipedrive.live("organizations")
    )
    open_deals = Counter(
        ("org", deal["org_id"]) if deal["org_id"] else ("person", deal["person_id"])
        for deal in pipedrive.live("deals")
        if deal["status"] == "open"
    )
    return Figures(
        bookings=len(events),
        synced=len(synced),
        lost=len(events) - len(synced),
        duplicate_activities=extra(Counter({k: len(v) for k, v in activities.items()})),
        duplicate_persons=extra(persons),
        duplicate_organizations=extra(organizations),
        duplicate_open_deals=extra(open_deals),
        wrong_times=sum(not _time_matches(e, activities[e["_id"]][0]) for e in synced),
    )


def _time_matches(event: JsonObject, activity: dict[str, Any]) -> bool:
    """Tell whether the activity is at the booking's confirmed slot, in UTC."""
    date_id = event["confirmed"]["date_id"]
    slot = next(d for d in event["dates"] if d["_id"] == date_id)
    start = datetime.fromisoformat(slot["date"].replace("Z", "+00:00"))
    return bool(
        activity["due_date"] == start.strftime("%Y-%m-%d")
        and activity["due_time"] == start.strftime("%H:%M:00")
    )


# Report --------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"on {platform.system()} {platform.release()}"
    )


def fault_counts(
    rules: list[FaultRule], pipedrive: EmulatorServer, vyte: EmulatorServer
) -> dict[str, int]:
    """Return the requests each emulator served and how many faults fired."""
    return {
        "requests": len(pipedrive.requests),
        "503": rules[0].fired,
        "429": rules[1].fired,
        "delayed": rules[2].fired,
        "vyte_requests": len(vyte.requests),
        "vyte_faults": rules[3].fired + rules[4].fired,
    }


def render(
    args: argparse.Namespace,
    figures: Figures,
    log: RunLog,
    converged: bool,
    wall_seconds: float,
    faults: dict[str, int],
) -> str:
    command = "python -m benchmarks.chaos"
    if (args.bookings, args.kills, args.seed) != (1000, 20, 1):
        command += (
            f" --bookings {args.bookings} --kills {args.kills} --seed {args.seed}"
        )
    exits = ", ".join(
        f"{count} × {status}" for status, count in sorted(log.exits.items())
    )
    lines = [
        "# Chaos benchmark",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d} on {machine()}.",
        "",
        "```sh",
        f".venv/bin/{command}",
        "```",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| bookings seeded (confirmed) | {figures.bookings} |",
        f"| bookings synced | {figures.synced} |",
        f"| bookings lost | {figures.lost} |",
        f"| duplicates found | {figures.duplicates} |",
        f"| … extra activities per booking | {figures.duplicate_activities} |",
        f"| … extra persons per email | {figures.duplicate_persons} |",
        f"| … extra organizations per name | {figures.duplicate_organizations} |",
        f"| … extra open deals per organization or person | "
        f"{figures.duplicate_open_deals} |",
        f"| activities at the wrong time | {figures.wrong_times} |",
        f"| SIGKILLs (by time / after a write) | {log.kills} "
        f"({log.kills_by_time} / {log.kills_by_writes}) |",
        f"| `retry` runs to converge | {log.convergence_runs}"
        f"{'' if converged else ' (did not converge)'} |",
        f"| exit statuses of all runs | {exits} |",
        f"| Pipedrive requests served | {faults['requests']} |",
        f"| … answered 503 / 429 / delayed past the timeout | "
        f"{faults['503']} / {faults['429']} / {faults['delayed']} |",
        f"| Vyte requests served (failed or delayed) | {faults['vyte_requests']} "
        f"({faults['vyte_faults']}) |",
        f"| Pipedrive requests per booking, per second | "
        f"{faults['requests'] / figures.bookings:.1f}, "
        f"{faults['requests'] / wall_seconds:.1f} |",
        f"| wall time | {wall_seconds / 60:.1f} min ({wall_seconds:.0f} s) |",
        "",
    ]
    return "\n".join(lines)


SETUP = f"""\
Both emulators run inside the benchmark process on 127.0.0.1. The Pipedrive
emulator enforces a burst limit of {BURST_LIMIT} requests per 2 s (the daemon
paces itself to the same limit) and a daily budget too large to matter. Of all
Pipedrive requests, {SERVER_ERROR_SHARE:.0%} are answered 503,
{RATE_LIMITED_SHARE:.0%} are answered 429 with `Retry-After: 1`, and
{TIMEOUT_SHARE:.0%} are applied but answered after {DELAY_SECONDS} s, past the
daemon's read timeout of {READ_TIMEOUT_SECONDS:.0f} s. Of the Vyte GETs,
{VYTE_ERROR_SHARE:.0%} are answered 503 and {VYTE_TIMEOUT_SHARE:.0%} are delayed
the same way. The seeded bookings mix company bookers, free-mail bookers,
returning bookers and meetings with colleagues of the booker.

`bookingsync sync` runs as a subprocess on a SQLite state database and is
SIGKILLed either at a random time after it starts or right after Pipedrive
applied a random number of its writes, before the reply is sent. Once all the
kills have landed, `bookingsync retry` runs with the faults still on until two
runs in a row exit 0 with no failing booking. A booking counts as synced when
a live activity carries its marker line. Duplicates are the extra live
activities per booking, persons per email, organizations per name, and open
deals per organization (per person for deals without one). The wall time runs
from the first sync to the end of the last `retry`.

The wall time is mostly waiting, because the daemon sends one request at a
time. By estimate, the injected faults alone make each request wait about
{EXPECTED_WAIT_SECONDS:.2f} s on average. A 503 costs a backoff of 0.25 to
0.5 s, a 429 costs the 1 s of `Retry-After`, and a delayed reply costs the
1 s read timeout plus a lookup or a backoff.
"""


def refill(text: str) -> str:
    """Wrap each paragraph of ``text`` again at 79 columns."""
    paragraphs = (" ".join(part.split()) for part in text.split("\n\n"))
    return "\n\n".join(textwrap.fill(part, 79) for part in paragraphs) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Sync bookings through faulty APIs while killing the daemon.",
    )
    parser.add_argument(
        "--bookings", type=int, default=1000, help="Confirmed bookings to seed."
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver.")
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="Random seed for bookings, faults and kills.",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"Markdown file for the figures [default: {DOC_PATH} for a full run "
        "with 1,000 bookings and 20 kills, none otherwise].",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss} {message}")
    rng = random.Random(args.seed)
    vyte = VyteEmulator(api_key=VYTE_KEY)
    host_id = vyte.add_user(HOST_NAME, HOST_EMAIL)
    pipedrive = PipedriveEmulator(
        token=PIPEDRIVE_TOKEN,
        burst_limit=BURST_LIMIT,
        daily_token_budget=DAILY_TOKEN_BUDGET,
    )
    pipedrive.add_user(HOST_NAME, HOST_EMAIL)
    events = seed_bookings(vyte, host_id, args.bookings, rng)

    workdir = Path(tempfile.mkdtemp(prefix="bookingsync-chaos-"))
    with (
        EmulatorServer(vyte, seed=args.seed) as vyte_server,
        EmulatorServer(pipedrive, seed=args.seed) as pipedrive_server,
    ):
        rules = add_faults(pipedrive_server, vyte_server)
        ignore_disconnects(pipedrive_server)
        ignore_disconnects(vyte_server)
        daemon = Daemon(workdir, vyte_server.url, pipedrive_server.url)
        killer = Killer(pipedrive_server)
        log = RunLog()
        started = time.monotonic()
        kill_phase(daemon, killer, args.kills, rng, log)
        converged = converge(daemon, log)
        wall_seconds = time.monotonic() - started
        faults = fault_counts(rules, pipedrive_server, vyte_server)

    figures = count_figures(pipedrive, events)
    text = render(args, figures, log, converged, wall_seconds, faults)
    print(text)
    doc = args.doc
    if doc is None and (args.bookings, args.kills) == (1000, 20):
        doc = DOC_PATH
    if doc is not None:
        doc.write_text(text + "\n" + refill(SETUP))
        logger.info("Figures written to {path}", path=doc)
    ok = converged and figures.lost == 0 and figures.duplicates == 0
    if ok:
        shutil.rmtree(workdir)
    else:
        logger.warning("Kept the state and the daemon's log in {path}", path=workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
