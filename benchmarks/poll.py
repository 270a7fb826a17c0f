"""Poll scaling: time and memory of one poll over 1,000 to 50,000 events.

Vyte has no "changed since" filter, so every poll downloads and parses every
event. The floor of a poll is therefore ``json.loads`` of the response body,
and each figure is reported as a ratio to that floor.

For each size the benchmark

1. generates the events (``harness.varied_event``) and picks every 100th as
   the 1% that changes;
2. starts ``benchmarks.serve`` in its own process, so the emulators' CPU time
   is not counted as the daemon's;
3. writes the state database a previous sync would have left: one synced
   snapshot per event, plus the Pipedrive ids of the changed bookings;
4. runs ``benchmarks.probe`` in a fresh process per measurement, on a fresh
   copy of that database.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    HOST_EMAIL,
    ROOT,
    EmulatorProcess,
    make_settings,
    varied_event,
)
from bookingsync.app import open_store
from bookingsync.engine.mapping import organization_name
from bookingsync.models.booking import Booking
from bookingsync.models.state import (
    BookingState,
    OrganizationMap,
    PersonMap,
    RemoteState,
)
from bookingsync.sandbox.vyte_events import new_object_id
from bookingsync.settings import Settings
from bookingsync.sources.vyte import VyteSource

# Above every size measured, so one request lists all events, as it does for
# an organization whose page limit is set above its event count.
PAGE_LIMIT = 100_000
# The poll benchmark measures CPU and memory, not pacing, so the daemon may
# send as fast as the emulator, which has no burst limit here, responds.
BURST_LIMIT = 100_000
CHANGED_EVERY = 100
# Target: one poll costs at most this many times json.loads of its response.
CPU_RATIO_TARGET = 1.25
PLACEHOLDER_ID_BASE = 10**8


@dataclass(frozen=True)
class PollFigures:
    """One poll configuration: median times and peak memory over the runs."""

    events: int
    variant: str
    runs: int
    body_bytes: int
    wall_seconds: float
    cpu_seconds: float
    peak_added_bytes: int
    parse_cpu_seconds: float
    download_parse_cpu_seconds: float
    download_parse_wall_seconds: float
    floor_peak_added_bytes: int
    # CPU time of the first poll after start, in which nothing changed.
    first_poll_cpu_seconds: float
    unchanged: int
    updated: int
    pipedrive_requests: int

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_seconds / self.parse_cpu_seconds

    @property
    def wall_ratio(self) -> float:
        return self.wall_seconds / self.parse_cpu_seconds

    @property
    def memory_ratio(self) -> float:
        return self.peak_added_bytes / self.body_bytes


@dataclass(frozen=True)
class Fixture:
    workdir: Path
    database: Path
    events: int
    changed_ids: list[str]


@dataclass
class PollResult:
    figures: list[PollFigures]
    # Per variant, the profile of the largest size that missed the CPU target.
    profiles: dict[str, tuple[str, str]]


def run(workdir: Path, sizes: dict[int, int]) -> PollResult:
    """Measure each size, with none and with 1% of the events changed.

    ``sizes`` maps each number of events to the number of measured polls.
    """
    result = PollResult([], {})
    for size, repeats in sorted(sizes.items()):
        measure_size(workdir / f"poll-{size}", size, repeats, result)
    return result


def measure_size(workdir: Path, size: int, repeats: int, result: PollResult) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    events, changed_ids = generate_events(size)
    events_file = workdir / "events.json"
    events_file.write_text(json.dumps(events), encoding="utf-8")
    spec = {
        "vyte": {
            "events_file": str(events_file),
            "changed_ids": changed_ids,
            "page_limit": PAGE_LIMIT,
        },
        "pipedrive": {"seed_sets": len(changed_ids)},
    }
    with EmulatorProcess(workdir, spec) as emulators:
        ready = emulators.ready
        database = seed_database(workdir, events, changed_ids, ready)
        del events
        fixture = Fixture(workdir, database, size, changed_ids)
        for variant, vyte in (
            ("none changed", "vyte_base"),
            ("1% changed", "vyte_changed"),
        ):
            figures = measure_variant(fixture, ready, variant, vyte, repeats)
            result.figures.append(figures)
            if figures.cpu_ratio > CPU_RATIO_TARGET:
                label = f"{size:,}-event, {variant}"
                result.profiles[variant] = (label, profile(fixture, ready, vyte))


def generate_events(size: int) -> tuple[list[dict[str, Any]], list[str]]:
    rng = random.Random(size)
    host_id = new_object_id()
    # Each event has its own booker, three bookers per company, so the
    # bookings that change need no shared Pipedrive items.
    events = [varied_event(host_id, rng, index, index // 3) for index in range(size)]
    changed_ids = [events[i]["_id"] for i in range(0, size, CHANGED_EVERY)]
    return events, changed_ids


def seed_database(
    workdir: Path,
    events: list[dict[str, Any]],
    changed_ids: list[str],
    ready: dict[str, Any],
) -> Path:
    """Write the snapshot a previous sync of ``events`` would have left.

    The changed bookings point at the Pipedrive items that the emulator
    process seeded, and their persons and organizations are in the local
    mapping, so updating them needs no search. The other bookings carry
    placeholder ids that the poll never sends to Pipedrive.
    """
    database = workdir / "seed" / "bookingsync.db"
    settings = make_settings(
        database.parent,
        ready["vyte_base"],
        ready["pipedrive"],
        vyte_page_limit=PAGE_LIMIT,
    )
    source = VyteSource(settings)
    store = open_store(settings)
    seeded = dict(zip(changed_ids, ready["seeded"], strict=True))
    rows: list[Any] = []
    for index, raw in enumerate(events):
        booking = source.parse(raw)
        if not isinstance(booking, Booking):
            raise RuntimeError(f"generated event {index} did not parse: {booking}")
        ids = seeded.get(booking.booking_id) or placeholder_ids(index)
        rows.extend(state_rows(booking, ids, settings, booking.booking_id in seeded))
    with store.session() as session:
        session.add_all(rows)
        session.commit()
    store.cache_users({HOST_EMAIL: ready["pipedrive_user_id"]})
    source.close()
    store.engine.dispose()
    return database


def placeholder_ids(index: int) -> dict[str, Any]:
    base = PLACEHOLDER_ID_BASE + 4 * index
    return {
        "org_id": base,
        "person_ids": [base + 1, base + 2],
        "deal_id": base + 3,
        "activity_id": base,
    }


def state_rows(
    booking: Booking, ids: dict[str, Any], settings: Settings, mapped: bool
) -> list[Any]:
    """Return the snapshot row of a synced booking, plus its mapping rows."""
    organization = organization_name(booking.booker, settings)
    org_id = ids["org_id"] if organization else None
    person_ids = ids["person_ids"][: len(booking.invitees)]
    fingerprint = booking.fingerprint()
    rows: list[Any] = [
        BookingState(
            key=booking.key,
            source=booking.source,
            booking_id=booking.booking_id,
            host_user_id=booking.host_user_id,
            status="confirmed",
            slot_end=booking.end,
            source_updated_at=booking.source_updated_at,
            seen_fingerprint=fingerprint,
            synced_fingerprint=fingerprint,
            synced_content=booking.model_dump_json(),
            org_id=org_id,
            person_ids=json.dumps(person_ids),
            deal_id=ids["deal_id"],
            activity_id=ids["activity_id"],
            remote_state=RemoteState.ACTIVE.value,
        )
    ]
    if mapped:
        rows.extend(
            PersonMap(email=invitee.email, person_id=person_id)
            for invitee, person_id in zip(booking.invitees, person_ids, strict=False)
        )
        if organization:
            rows.append(
                OrganizationMap(name_key=organization.casefold(), org_id=org_id)
            )
    return rows


def measure_variant(
    fixture: Fixture, ready: dict[str, Any], variant: str, vyte: str, repeats: int
) -> PollFigures:
    base = probe_base(ready, vyte)
    floor = probe({**base, "kind": "floor"})
    runs = [probe_poll(fixture, base, "poll", f"{variant}-{n}") for n in range(repeats)]
    for result in runs:
        check_poll(result, fixture, variant)
    return PollFigures(
        events=fixture.events,
        variant=variant,
        runs=len(runs),
        body_bytes=floor["body_bytes"],
        wall_seconds=statistics.median(r["wall_seconds"] for r in runs),
        cpu_seconds=statistics.median(r["cpu_seconds"] for r in runs),
        peak_added_bytes=max(r["peak_added_bytes"] for r in runs),
        parse_cpu_seconds=floor["parse_cpu_seconds"],
        download_parse_cpu_seconds=floor["download_parse_cpu_seconds"],
        download_parse_wall_seconds=floor["download_parse_wall_seconds"],
        floor_peak_added_bytes=floor["peak_added_bytes"],
        first_poll_cpu_seconds=statistics.median(
            r["first_poll_cpu_seconds"] for r in runs
        ),
        unchanged=runs[0]["unchanged"],
        updated=runs[0]["updated"],
        pipedrive_requests=runs[0]["pipedrive_requests"],
    )


def probe_base(ready: dict[str, Any], vyte: str) -> dict[str, Any]:
    """Return the spec entries every probe of this fixture shares."""
    return {
        "vyte_url": ready[vyte],
        "warm_up_vyte_url": ready["vyte_base"],
        "pipedrive_url": ready["pipedrive"],
        "page_limit": PAGE_LIMIT,
        "burst_limit": BURST_LIMIT,
    }


def profile(fixture: Fixture, ready: dict[str, Any], vyte: str) -> str:
    spec = probe_base(ready, vyte)
    text: str = probe_poll(fixture, spec, "poll-profile", f"profile-{vyte}")["profile"]
    return text


def probe_poll(
    fixture: Fixture, base: dict[str, Any], kind: str, label: str
) -> dict[str, Any]:
    """Copy the seeded database and run one poll on the copy."""
    workdir = fixture.workdir / label.replace(" ", "-").replace("%", "pct")
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "bookingsync.db"
    shutil.copyfile(fixture.database, database)
    spec = {
        **base,
        "kind": kind,
        "workdir": str(workdir),
        "database_url": f"sqlite:///{database}",
    }
    return probe(spec)


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmarks.probe {spec['kind']} failed with exit status "
            f"{completed.returncode}:\n{completed.stderr}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def check_poll(result: dict[str, Any], fixture: Fixture, variant: str) -> None:
    """Raise unless the poll did what the variant sets up."""
    changed = len(fixture.changed_ids) if variant != "none changed" else 0
    expected = {
        "ok": True,
        "unchanged": fixture.events - changed,
        "updated": changed,
        "created": 0,
    }
    wrong = {key for key, value in expected.items() if result.get(key) != value}
    if wrong:
        raise RuntimeError(
            f"the {variant} poll over {fixture.events} events did not do what "
            f"was set up: expected {expected}, got {result}"
        )
