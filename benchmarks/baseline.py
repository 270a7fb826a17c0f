"""The obvious alternative: a stateless client that looks everything up again.

Integrations without local state (most no-code recipes) handle each booking
on each poll the same way: search the booker by email, list the booker's
activities to find the one for this booking, then write it. They cannot tell
an unchanged booking from a changed one, so every poll costs as much as the
last. ``StatelessClient`` is a small client of that kind. It produces the
same Pipedrive items as bookingsync (organization, persons, deal, activity
with the same fields) but keeps nothing between polls.

It runs over the same bookings and the same three polls as the backfill
(initial, unchanged, 1% rescheduled), so the ratio of its requests and tokens
to bookingsync's is measured on identical input. Its Pipedrive emulator has no
burst limit. ``BaselineProcess`` runs it in a child process at the lowest CPU
priority, so it can use the CPU that the backfill, paced by the burst limit,
leaves idle without slowing the backfill down.

Run: ``python -m benchmarks.baseline WORKDIR`` with ``events.json`` and
``moved.json`` in WORKDIR. It prints the polls as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    PIPEDRIVE_TOKEN,
    ROOT,
    VYTE_KEY,
    EmulatorProcess,
    make_settings,
    reschedule_later,
)
from bookingsync.engine.mapping import (
    RemoteIds,
    activity_fields,
    booking_marker,
    organization_name,
    person_name,
)
from bookingsync.errors import InvalidBooking
from bookingsync.models.booking import Booking, Invitee
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject
from bookingsync.settings import Settings
from bookingsync.sources.vyte import SkipEvent, parse_event

PAGE_LIMIT = 100_000
# Fields a careful stateless client could compare before it writes.
COMPARED_FIELDS = ("subject", "due_date", "due_time", "duration")


@dataclass(frozen=True)
class BaselinePoll:
    label: str
    requests: int
    tokens: int
    # Updates that changed none of COMPARED_FIELDS: a careful stateless client
    # that compares before writing would skip them.
    idle_updates: int
    wall_seconds: float


class StatelessClient:
    """Sync Vyte bookings into Pipedrive without any local state."""

    def __init__(self, settings: Settings, vyte_url: str, pipedrive_url: str) -> None:
        self.settings = settings
        self.vyte = httpx.Client(
            base_url=vyte_url, headers={"Authorization": VYTE_KEY}, timeout=120
        )
        self.pipedrive = httpx.Client(
            base_url=pipedrive_url,
            headers={"x-api-token": PIPEDRIVE_TOKEN},
            timeout=30,
        )
        self.idle_updates = 0

    def close(self) -> None:
        self.vyte.close()
        self.pipedrive.close()

    def poll(self) -> None:
        """List every event and write every confirmed booking to Pipedrive."""
        response = self.vyte.get("/v2/events", params={"limit": str(PAGE_LIMIT)})
        response.raise_for_status()
        now = datetime.now(UTC)
        for raw in response.json():
            try:
                booking = parse_event(raw, self.settings, now)
            except (InvalidBooking, SkipEvent):
                continue
            if isinstance(booking, Booking):
                self.sync_booking(booking)

    def sync_booking(self, booking: Booking) -> None:
        organization = organization_name(booking.booker, self.settings)
        persons = [
            self.find_or_create_person(invitee, organization)
            for invitee in booking.invitees[: self.settings.max_persons_per_booking]
        ]
        person_ids = [person_id for person_id, _org_id in persons]
        org_id = persons[0][1]
        marker = booking_marker(booking.key)
        activities = self.get("/api/v2/activities", person_id=person_ids[0], limit=500)
        existing = [a for a in activities if marker in (a.get("note") or "")]
        if existing:
            self.update_activity(booking, existing[0], person_ids, organization)
        else:
            self.create_activity(booking, person_ids, org_id, organization)

    def find_or_create_person(
        self, invitee: Invitee, organization: str | None
    ) -> tuple[int, int | None]:
        """Return the person's id and organization id, creating both if needed."""
        found = self.get(
            "/api/v2/persons/search",
            term=invitee.email,
            fields="email",
            exact_match="true",
        )
        items = found.get("items") or []
        if items:
            item = items[0]["item"]
            org_id = (item.get("organization") or {}).get("id")
            return int(item["id"]), org_id
        body: dict[str, Any] = {
            "name": person_name(invitee),
            "emails": [{"value": invitee.email, "primary": True}],
        }
        org_id = self.find_or_create_organization(organization)
        if org_id is not None:
            body["org_id"] = org_id
        return int(self.post("/api/v2/persons", body)["id"]), org_id

    def find_or_create_organization(self, name: str | None) -> int | None:
        if name is None:
            return None
        found = self.get(
            "/api/v2/organizations/search", term=name, fields="name", exact_match="true"
        )
        items = found.get("items") or []
        if items:
            return int(items[0]["item"]["id"])
        return int(self.post("/api/v2/organizations", {"name": name})["id"])

    def create_activity(
        self,
        booking: Booking,
        person_ids: list[int],
        org_id: int | None,
        organization: str | None,
    ) -> None:
        deals = self.get(
            "/api/v2/deals", person_id=person_ids[0], status="open", limit=500
        )
        if deals:
            deal_id = int(deals[0]["id"])
        else:
            body: dict[str, Any] = {
                "title": organization or person_name(booking.booker),
                "person_id": person_ids[0],
            }
            if org_id is not None:
                body["org_id"] = org_id
            deal_id = int(self.post("/api/v2/deals", body)["id"])
        ids = RemoteIds(tuple(person_ids), org_id, deal_id, None)
        fields = activity_fields(booking, ids, self.settings, organization)
        self.post("/api/v2/activities", fields)

    def update_activity(
        self,
        booking: Booking,
        activity: dict[str, Any],
        person_ids: list[int],
        organization: str | None,
    ) -> None:
        ids = RemoteIds(
            tuple(person_ids), activity.get("org_id"), activity.get("deal_id"), None
        )
        fields = activity_fields(booking, ids, self.settings, organization)
        if all(
            _comparable(activity.get(key)) == _comparable(fields.get(key))
            for key in COMPARED_FIELDS
        ):
            self.idle_updates += 1
        self.request("PATCH", f"/api/v2/activities/{activity['id']}", fields)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        response = self.pipedrive.request(method, path, json=body, params=params)
        response.raise_for_status()
        return response.json()["data"]


def _comparable(value: Any) -> Any:
    # Pipedrive returns times as HH:MM:SS for the HH:MM that was sent.
    if isinstance(value, str) and len(value) == 8 and value[2] == value[5] == ":":
        return value[:5]
    return value


def run(
    workdir: Path, events: list[JsonObject], moved: list[str]
) -> list[BaselinePoll]:
    """Run the stateless client over ``events`` for three polls.

    Before the third poll the events of ``moved`` are rescheduled, as in the
    backfill benchmark.
    """
    vyte = VyteEmulator(api_key=VYTE_KEY)
    for event in events:
        vyte.add_event(event)
    with (
        EmulatorServer(vyte) as vyte_server,
        EmulatorProcess(workdir / "emulators", {"pipedrive": {}}) as pipedrive,
    ):
        settings = make_settings(workdir, vyte_server.url, pipedrive.ready["pipedrive"])
        client = StatelessClient(
            settings, vyte_server.url, pipedrive.ready["pipedrive"]
        )
        try:
            polls = [_counted(client, pipedrive, "initial poll")]
            polls.append(_counted(client, pipedrive, "unchanged poll"))
            reschedule_later(vyte, moved)
            polls.append(_counted(client, pipedrive, "1% rescheduled"))
        finally:
            client.close()
    return polls


def _counted(
    client: StatelessClient, pipedrive: EmulatorProcess, label: str
) -> BaselinePoll:
    before = pipedrive.stats()
    idle_before = client.idle_updates
    started = time.perf_counter()
    client.poll()
    wall = time.perf_counter() - started
    after = pipedrive.stats()
    requests = sum(r[-1] for r in after["requests"]) - sum(
        r[-1] for r in before["requests"]
    )
    return BaselinePoll(
        label,
        requests,
        after["tokens_spent"] - before["tokens_spent"],
        client.idle_updates - idle_before,
        wall,
    )


class BaselineProcess:
    """``run`` in a child process over events written to ``workdir``."""

    def __init__(
        self, workdir: Path, events: list[JsonObject], moved: list[str]
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "events.json").write_text(json.dumps(events), encoding="utf-8")
        (workdir / "moved.json").write_text(json.dumps(moved), encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.baseline", str(workdir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(self) -> list[BaselinePoll]:
        """Wait for the child and return its polls."""
        output, _ = self._process.communicate()
        if self._process.returncode != 0:
            raise RuntimeError(
                f"benchmarks.baseline failed with exit status "
                f"{self._process.returncode}; its error output is above"
            )
        return [BaselinePoll(**poll) for poll in json.loads(output)]


def main(folder: str) -> None:
    from benchmarks.harness import isolate_environment

    # The emulator process started below inherits the priority.
    os.nice(19)
    isolate_environment()
    workdir = Path(folder)
    events = json.loads((workdir / "events.json").read_text(encoding="utf-8"))
    moved = json.loads((workdir / "moved.json").read_text(encoding="utf-8"))
    polls = run(workdir, events, moved)
    print(json.dumps([asdict(poll) for poll in polls]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
