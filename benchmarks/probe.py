"""Measure one poll, or the JSON parse floor, in a fresh process.

A fresh process has no caches, heap or peak memory left over from another
measurement. The poll benchmark starts this module once per measurement with
a JSON spec as its only argument and reads one JSON line of figures from its
output.

Kinds of measurement (``spec["kind"]``):

- ``poll``: wall time, CPU time and the peak resident memory added by one
  ``App.sync()`` against the emulators and the state database named in the
  spec, after a first poll in which nothing changed (see ``warm_up``).
- ``poll-profile``: the same poll under cProfile, with the top functions.
- ``floor``: download the same listing with httpx and decode it with
  ``json.loads``, reporting the time and peak memory of both together, then
  time ``json.loads`` alone of the exact body bytes (best of three).

Run: ``python -m benchmarks.probe '{"kind": "poll", ...}'``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The profile lists the daemon's functions and the library calls that matter.
PROFILE_FILTER = r"bookingsync/|json/decoder|sqlite3|httpx/_client.py"


def resident_bytes() -> int:
    """Return the process's current resident set size."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def reset_peak_resident() -> None:
    """Lower the peak resident set size to the current one (Linux 4.0 and later).

    Start-up (imports, opening the database) may have peaked higher than the
    poll will, and ``ru_maxrss`` never goes down, so without the reset such a
    start-up peak would count as the poll's.
    """
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def peak_resident_bytes() -> int:
    """Return the peak resident set size since start or the last reset."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # Without VmHWM, fall back to the peak since start (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_app(spec: dict[str, Any]) -> Any:
    from benchmarks.harness import isolate_environment, make_settings
    from bookingsync.app import App

    isolate_environment()
    settings = make_settings(
        Path(spec["workdir"]),
        spec["warm_up_vyte_url"],
        spec["pipedrive_url"],
        database_url=spec["database_url"],
        vyte_page_limit=spec["page_limit"],
        pipedrive_burst_limit=spec["burst_limit"],
    )
    return App.build(settings)


def warm_up(app: Any, spec: dict[str, Any]) -> float:
    """Run a first poll in which nothing changed; return its CPU time.

    The daemon is a long-lived process, so the poll that matters is a later
    one, with SQLAlchemy's statement cache filled and the connections open.
    Afterwards the source is pointed at the Vyte emulator of the measured
    poll, which may hold changed events.
    """
    from bookingsync.sources.vyte import VyteClient

    cpu_before = time.process_time()
    report = app.sync(trigger="benchmark")
    cpu = time.process_time() - cpu_before
    if not report.ok or report.run is None or report.run.updated:
        raise RuntimeError(f"the warm-up poll was not an unchanged poll: {report}")
    if spec["vyte_url"] != spec["warm_up_vyte_url"]:
        settings = app.settings.model_copy(update={"vyte_base_url": spec["vyte_url"]})
        app.source.client.close()
        app.source.client = VyteClient.from_settings(settings)
        app.source.client.request("GET", "/v2/auth/test")
    return cpu


def measure_poll(spec: dict[str, Any], profiler: Any = None) -> dict[str, Any]:
    app = build_app(spec)
    # Memory is counted from the idle daemon, before the first poll: a later
    # poll reuses memory that the first one freed, so growth from the start of
    # the measured poll would miss most of its working set.
    resident_before = resident_bytes()
    first_cpu = warm_up(app, spec)
    reset_peak_resident()
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    report = app.sync(trigger="benchmark")
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    peak_added = peak_resident_bytes() - resident_before
    app.close()

    run = report.run
    return {
        "ok": report.ok,
        "failed": len(report.failed),
        "listed": run.listed if run else None,
        "unchanged": run.unchanged if run else None,
        "updated": run.updated if run else None,
        "created": run.created if run else None,
        "pipedrive_requests": run.requests if run else None,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "peak_added_bytes": peak_added,
        "first_poll_cpu_seconds": first_cpu,
    }


def profile_poll(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the poll under cProfile and return the functions that cost most.

    Only the daemon's own functions, JSON decoding, SQLite and httpx requests
    are listed, sorted by cumulative time, with paths shortened.
    """
    import cProfile
    import io
    import pstats
    import site
    import sysconfig

    profiler = cProfile.Profile()
    figures = measure_poll(spec, profiler)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats(PROFILE_FILTER, spec.get("top", 30))
    listing = text.getvalue()
    prefixes = [
        str(Path(__file__).resolve().parents[1]),
        *site.getsitepackages(),
        sysconfig.get_paths()["stdlib"],
    ]
    for prefix in prefixes:
        listing = listing.replace(prefix + "/", "")
    figures["profile"] = listing
    return figures


def listing_client(spec: dict[str, Any]) -> Any:
    """Return an httpx client for the listing, built before any timing starts."""
    import httpx

    from benchmarks.harness import VYTE_KEY

    return httpx.Client(
        base_url=spec["vyte_url"],
        timeout=120,
        headers={"Authorization": VYTE_KEY, "Accept": "application/json"},
    )


def download(client: Any, spec: dict[str, Any]) -> bytes:
    response = client.get("/v2/events", params={"limit": str(spec["page_limit"])})
    response.raise_for_status()
    body: bytes = response.content
    return body


def measure_floor(spec: dict[str, Any]) -> dict[str, Any]:
    client = listing_client(spec)
    reset_peak_resident()
    resident_before = resident_bytes()
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    body = download(client, spec)
    events = json.loads(body)
    download_cpu = time.process_time() - cpu_before
    download_wall = time.perf_counter() - wall_before
    peak_added = peak_resident_bytes() - resident_before
    del events

    parse_cpu = parse_wall = float("inf")
    for _ in range(3):
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        json.loads(body)
        parse_cpu = min(parse_cpu, time.process_time() - cpu_before)
        parse_wall = min(parse_wall, time.perf_counter() - wall_before)
    return {
        "body_bytes": len(body),
        "parse_cpu_seconds": parse_cpu,
        "parse_wall_seconds": parse_wall,
        "download_parse_cpu_seconds": download_cpu,
        "download_parse_wall_seconds": download_wall,
        "peak_added_bytes": peak_added,
    }


def main(argument: str) -> None:
    spec = json.loads(argument)
    kind = spec["kind"]
    if kind == "poll":
        figures = measure_poll(spec)
    elif kind == "poll-profile":
        figures = profile_poll(spec)
    elif kind == "floor":
        figures = measure_floor(spec)
    else:
        raise SystemExit(
            f"unknown measurement kind {kind!r}; expected poll, poll-profile or floor"
        )
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
