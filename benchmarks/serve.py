"""Serve the emulators from a separate process for the poll benchmark.

The poll benchmark measures the daemon's CPU time and memory, so the
emulators must not run inside the measured process. This runner reads a spec
(JSON) naming an events file, starts on 127.0.0.1:

- a Vyte emulator holding those events ("base");
- a second Vyte emulator holding the same events with some of them
  rescheduled through ``VyteEmulator.reschedule`` ("changed");
- a Pipedrive emulator seeded with one person, organization, deal and
  activity per rescheduled booking, so the daemon's updates find them;

prints one JSON line with the URLs and seeded ids, and serves until its
standard input closes.

The encoded ``GET /v2/events`` response is cached per query, because the
events do not change while the runner lives. The daemon therefore waits only
for the transfer, not for the emulator to encode 100 MB of JSON again.

Run: ``python -m benchmarks.serve SPEC.json``.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import timedelta
from typing import Any

from benchmarks.harness import HOST_EMAIL, HOST_NAME, PIPEDRIVE_TOKEN, VYTE_KEY
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer, Request, Response
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject, parse_timestamp


class CachedListing:
    """Wrap a Vyte emulator and reuse its encoded event listings."""

    def __init__(self, emulator: VyteEmulator) -> None:
        self.emulator = emulator
        self._cache: dict[tuple[str, str], Response] = {}
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.method != "GET" or request.path != "/v2/events":
            return self.emulator.handle(request)
        key = (
            request.headers.get("authorization", ""),
            repr(sorted(request.query.items())),
        )
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                cached = self.emulator.handle(request)
                if cached.status == 200:
                    self._cache[key] = cached
        return Response(cached.status, cached.body, dict(cached.headers))

    def warm(self, limit: int) -> int:
        """Encode the listing the daemon will request; return its size in bytes."""
        request = Request(
            method="GET",
            path="/v2/events",
            query={"limit": [str(limit)]},
            headers={"authorization": VYTE_KEY},
            body=b"",
        )
        return len(self.handle(request).body)


def vyte_emulator(events: list[JsonObject]) -> VyteEmulator:
    # The events already name their host; the runner lists no users, because
    # the daemon asks for them only when a listing comes back full.
    emulator = VyteEmulator(api_key=VYTE_KEY)
    for event in events:
        emulator.add_event(event)
    return emulator


def reschedule(emulator: VyteEmulator, event_ids: list[str]) -> None:
    """Move each event's confirmed slot one day later, as a host would."""
    for event_id in event_ids:
        event = emulator.events[event_id]
        date_id = event["confirmed"]["date_id"]
        slot = next(d for d in event["dates"] if d["_id"] == date_id)
        start = parse_timestamp(slot["date"]) + timedelta(days=1)
        end = parse_timestamp(slot["end_date"]) + timedelta(days=1)
        emulator.reschedule(event_id, start, end)


def seed_pipedrive(emulator: PipedriveEmulator, count: int) -> list[dict[str, Any]]:
    """Create ``count`` sets of organization, two persons, deal and activity."""
    seeded = []
    for index in range(count):
        org = emulator.ui_create("organizations", {"name": f"Seeded {index}"})
        persons = [
            emulator.ui_create_person(
                f"Seeded person {index}-{n}", f"seeded{index}-{n}@seeded.example"
            )["id"]
            for n in range(2)
        ]
        deal = emulator.ui_create(
            "deals",
            {"title": f"Seeded {index}", "person_id": persons[0], "org_id": org["id"]},
        )
        activity = emulator.ui_create(
            "activities",
            {
                "subject": f"Seeded {index}",
                "type": "meeting",
                "participants": [{"person_id": persons[0], "primary": True}],
                "deal_id": deal["id"],
                "org_id": org["id"],
            },
        )
        seeded.append(
            {
                "org_id": org["id"],
                "person_ids": persons,
                "deal_id": deal["id"],
                "activity_id": activity["id"],
            }
        )
    return seeded


def main(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    with open(spec["events_file"], encoding="utf-8") as handle:
        events = json.load(handle)

    base = vyte_emulator(events)
    changed = vyte_emulator(events)
    reschedule(changed, spec["changed_ids"])
    del events
    pipedrive = PipedriveEmulator(token=PIPEDRIVE_TOKEN)
    user_id = pipedrive.add_user(HOST_NAME, HOST_EMAIL)
    seeded = seed_pipedrive(pipedrive, len(spec["changed_ids"]))

    base_app, changed_app = CachedListing(base), CachedListing(changed)
    sizes = [app.warm(spec["page_limit"]) for app in (base_app, changed_app)]
    with (
        EmulatorServer(base_app) as base_server,
        EmulatorServer(changed_app) as changed_server,
        EmulatorServer(pipedrive) as pipedrive_server,
    ):
        ready = {
            "vyte_base": base_server.url,
            "vyte_changed": changed_server.url,
            "pipedrive": pipedrive_server.url,
            "pipedrive_user_id": user_id,
            "seeded": seeded,
            "body_bytes": sizes,
        }
        print(json.dumps(ready), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1])
