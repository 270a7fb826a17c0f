"""Serve the emulators from a separate process.

The poll benchmark measures the daemon's CPU time and memory, and the backfill
measures how close the daemon's pacing gets to Pipedrive's burst limit. In
both, emulators running inside the daemon's process would compete with it for
the CPU and the GIL, so this runner serves them from a process of its own.

It reads a JSON spec, starts on 127.0.0.1

- with ``"vyte"``: a Vyte emulator holding the events of ``events_file``
  ("base") and a second one with the events of ``changed_ids`` rescheduled
  through ``VyteEmulator.reschedule`` ("changed");
- always: a Pipedrive emulator with the spec's ``burst_limit`` and
  ``daily_token_budget``, seeded with ``seed_sets`` sets of one organization,
  two persons, a deal and an activity;

prints one JSON line with the URLs and seeded ids, then reads commands from
standard input, one per line, until it closes:

- ``stats``: print the Pipedrive emulator's ``tokens_spent`` and its request
  log, counted by method, endpoint and status, as one JSON line.

The encoded ``GET /v2/events`` response is cached per query, because the
events do not change while the runner lives. The daemon therefore waits only
for the transfer, not for the emulator to encode 100 MB of JSON again.

Run: ``python -m benchmarks.serve SPEC.json``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from contextlib import ExitStack
from typing import Any

from benchmarks.harness import (
    HOST_EMAIL,
    HOST_NAME,
    PIPEDRIVE_TOKEN,
    VYTE_KEY,
    endpoint_name,
    reschedule_later,
)
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer, Request, Response
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import JsonObject


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
    # The events already name their host. The runner lists no users, because
    # the daemon requests them only when a listing comes back full.
    emulator = VyteEmulator(api_key=VYTE_KEY)
    for event in events:
        emulator.add_event(event)
    return emulator


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


def serve_vyte(spec: dict[str, Any], stack: ExitStack) -> dict[str, Any]:
    with open(spec["events_file"], encoding="utf-8") as handle:
        events = json.load(handle)
    base = vyte_emulator(events)
    changed = vyte_emulator(events)
    del events
    reschedule_later(changed, spec["changed_ids"])
    urls = {}
    for name, emulator in (("vyte_base", base), ("vyte_changed", changed)):
        app = CachedListing(emulator)
        app.warm(spec["page_limit"])
        urls[name] = stack.enter_context(EmulatorServer(app)).url
    return urls


def pipedrive_stats(
    emulator: PipedriveEmulator, server: EmulatorServer
) -> dict[str, Any]:
    counts = Counter(
        (r.method, endpoint_name(r.method, r.path), r.status) for r in server.requests
    )
    return {
        "tokens_spent": emulator.tokens_spent,
        "requests": [[*key, count] for key, count in sorted(counts.items())],
    }


def main(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    options = spec["pipedrive"]
    pipedrive = PipedriveEmulator(
        token=PIPEDRIVE_TOKEN,
        burst_limit=options.get("burst_limit"),
        daily_token_budget=options.get("daily_token_budget"),
    )
    user_id = pipedrive.add_user(HOST_NAME, HOST_EMAIL)
    seeded = seed_pipedrive(pipedrive, options.get("seed_sets", 0))

    with ExitStack() as stack:
        ready = serve_vyte(spec["vyte"], stack) if spec.get("vyte") else {}
        server = stack.enter_context(EmulatorServer(pipedrive))
        ready.update(pipedrive=server.url, pipedrive_user_id=user_id, seeded=seeded)
        print(json.dumps(ready), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(pipedrive_stats(pipedrive, server)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
