"""Write the benchmark figures as Markdown (``docs/benchmarks.md``)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from benchmarks.backfill import BackfillResult, PollCount
from benchmarks.baseline import BaselinePoll
from benchmarks.cost import CostResult
from benchmarks.harness import ROOT
from benchmarks.poll import PollFigures

CPU_RATIO_TARGET = 1.25
MEMORY_RATIO_TARGET = 2.0
# Growth counts as linear while doubling the events at most doubles the cost,
# with 10% allowed for noise: a log-log slope of 1.1 or less.
GROWTH_SLOPE_LIMIT = 1.1
FRACTION_TARGET = 0.9
# Pipedrive's separate limit on Search API requests per 2-second window, the
# same on every plan, from its rate-limiting documentation.
SEARCH_BURST_LIMIT = 10
# Tokens of one update in Pipedrive's daily budget, as the emulator charges.
UPDATE_TOKENS = 5
MB = 1_000_000


@dataclass(frozen=True)
class Results:
    command: str
    started: datetime
    seconds: float
    cost: CostResult
    polls: list[PollFigures]
    # Per variant: the label of the profiled poll and the profile text.
    profiles: dict[str, tuple[str, str]]
    backfill: BackfillResult
    baseline: list[BaselinePoll]


@dataclass(frozen=True)
class TargetRow:
    part: str
    target: str
    measured: str
    met: bool


def render(results: Results) -> str:
    """Return the whole Markdown page."""
    targets = list(cost_targets(results)) + list(poll_targets(results))
    targets += list(backfill_targets(results))
    sections = [
        header(results),
        targets_section(targets),
        cost_section(results.cost),
        poll_section(results),
        backfill_section(results.backfill),
        baseline_section(results),
    ]
    return "\n\n".join(sections) + "\n"


# Header and machine --------------------------------------------------------


def header(results: Results) -> str:
    lines = [
        "# Benchmarks",
        "",
        "What a booking costs in Pipedrive API requests and tokens, how one poll "
        "scales with the number of Vyte events, and how close a backfill gets to "
        "Pipedrive's burst limit. Every figure comes from one run of the command "
        "below against the sandbox emulators on 127.0.0.1; the file is written by "
        "that command, so rerun it rather than editing figures.",
        "",
        f"- Command: `{results.command}` (from the repository root; "
        f"took {results.seconds / 60:.1f} minutes)",
        f"- Date: {results.started:%Y-%m-%d %H:%M} UTC",
        f"- Code: {git_revision()}",
        f"- CPU: {cpu_model()}, {cpu_count()}",
        f"- Memory: {memory_total()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"on {platform.platform()}",
        "",
        "Token costs are the Pipedrive emulator's own count: 20 per search, "
        "10 per list, 5 per create or update, 3 per delete and 1 per single "
        "read, the API v2 costs reported for mid-2025.",
    ]
    return "\n".join(lines)


def git_revision() -> str:
    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return completed.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown revision"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"commit {revision}" + (" with uncommitted changes" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_count() -> str:
    usable = len(os.sched_getaffinity(0))
    return f"{usable} cores usable ({os.cpu_count()} online)"


def memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return "unknown"
    return f"{kib / 1024 / 1024:.1f} GiB"


# Targets -------------------------------------------------------------------


def targets_section(rows: list[TargetRow]) -> str:
    met = sum(row.met for row in rows)
    lines = [
        "## Targets",
        "",
        f"{met} of {len(rows)} targets met. Each missed one is explained in its "
        "section, with the profile that shows where the time or requests go.",
        "",
        "| part | target | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.part} | {r.target} | {r.measured} | {'yes' if r.met else '**no**'} |"
        for r in rows
    ]
    return "\n".join(lines)


def cost_targets(results: Results) -> Iterable[TargetRow]:
    for row in results.cost.rows:
        if row.target is not None and row.met is not None:
            cost = row.cost
            measured = (
                f"{cost.requests} requests, {cost.searches} searches, "
                f"{cost.writes} writes"
            )
            yield TargetRow("cost: " + row.scenario, row.target.text, measured, row.met)


def poll_targets(results: Results) -> Iterable[TargetRow]:
    for figures in results.polls:
        label = f"poll: {figures.events:,} events, {figures.variant}"
        yield TargetRow(
            label,
            f"CPU at most {CPU_RATIO_TARGET} x json.loads",
            f"{figures.cpu_ratio:.2f} x",
            figures.cpu_ratio <= CPU_RATIO_TARGET,
        )
        yield TargetRow(
            label,
            f"peak memory at most {MEMORY_RATIO_TARGET:g} x response",
            f"{figures.memory_ratio:.2f} x",
            figures.memory_ratio <= MEMORY_RATIO_TARGET,
        )
    for variant, slopes in growth(results.polls).items():
        worst = max(slopes.values())
        yield TargetRow(
            f"poll: growth, {variant}",
            "linear or better",
            f"largest log-log slope of CPU time and memory {worst:.2f}",
            worst <= GROWTH_SLOPE_LIMIT,
        )


def backfill_targets(results: Results) -> Iterable[TargetRow]:
    backfill = results.backfill
    yield TargetRow(
        "backfill",
        f"requests/s at least {FRACTION_TARGET} of what the burst limits allow",
        f"{backfill.fraction_of_limit:.2f}",
        backfill.fraction_of_limit >= FRACTION_TARGET,
    )
    limited = sum(poll.rate_limited for poll in backfill.polls)
    yield TargetRow("backfill", "no 429 responses", f"{limited}", limited == 0)


# Cost per booking ----------------------------------------------------------


def cost_section(cost: CostResult) -> str:
    lines = [
        "## 1. Cost per booking",
        "",
        "One sandbox goes through a scripted story, one poll per step; the "
        "figures are what the Pipedrive emulator served during that poll. "
        "Produced by `benchmarks/cost.py`.",
        "",
        "| step | Pipedrive requests | tokens | searches | writes "
        "| Vyte requests | sync time | requests | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in cost.rows:
        c = row.cost
        target = "" if row.target is None else row.target.text
        if row.met is not None:
            target += " (met)" if row.met else " (**missed**)"
        lines.append(
            f"| {row.scenario} | {c.requests} | {c.tokens} | {c.searches} "
            f"| {c.writes} | {c.vyte_requests} | {c.wall_seconds * 1000:.0f} ms "
            f"| {c.describe_requests()} | {target} |"
        )
    warm = cost.warm_up
    jitter = max(1, cost.poll_interval // 10)
    lines += [
        "",
        "The first booking synced on a day also lists Pipedrive's users once, "
        "to find the host's user id. The warm-up booking before the story cost "
        f"{warm.requests} requests and {warm.tokens} tokens "
        f"({warm.describe_requests()}). The list is cached in the state database "
        "for 24 hours.",
        "",
        "Latency from a booking to the CRM: a booking waits for the next poll, "
        f"at most `poll_interval` ({cost.poll_interval} s by default) plus up to "
        f"{jitter} s of jitter, and the poll then takes the sync time above.",
    ]
    return "\n".join(lines)


# Poll scaling --------------------------------------------------------------


def growth(polls: list[PollFigures]) -> dict[str, dict[str, float]]:
    """Return the largest log-log slope between consecutive sizes, per variant."""
    slopes: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(p.variant for p in polls):
        series = sorted((p for p in polls if p.variant == variant), key=_events)
        measures = {
            "CPU": [p.cpu_seconds for p in series],
            "memory": [p.peak_added_bytes for p in series],
        }
        slopes[variant] = {
            name: max(
                (
                    _slope(series[i].events, series[i + 1].events, v[i], v[i + 1])
                    for i in range(len(series) - 1)
                ),
                default=0.0,
            )
            for name, v in measures.items()
        }
    return slopes


def _events(figures: PollFigures) -> int:
    return figures.events


def _slope(n1: int, n2: int, y1: float, y2: float) -> float:
    if y1 <= 0 or y2 <= 0:
        return math.inf
    return math.log(y2 / y1) / math.log(n2 / n1)


def poll_section(results: Results) -> str:
    polls = results.polls
    lines = [
        "## 2. Poll scaling",
        "",
        "One poll over generated Vyte events, each built by "
        "`bookingsync.sandbox.vyte_events.build_event` in the shape of Vyte's "
        "reference examples (host and booker invitees, one to three proposed "
        "slots, a place, often a message), all confirmed bookings that the state "
        'database already holds. "1% changed" reschedules every 100th event '
        "before the poll, so the daemon updates those activities in Pipedrive. "
        "Produced by `benchmarks/poll.py`.",
        "",
        "Method: the emulators run in their own process (`benchmarks/serve.py`), "
        "so the figures are the daemon's alone. Each measurement runs in a fresh "
        "process (`benchmarks/probe.py`) on a fresh copy of the state database. "
        "The daemon is long-lived, so the measured poll is the second one: a "
        "first poll in which nothing changed fills SQLAlchemy's statement cache "
        "and opens the connections. CPU and wall time are the median over the "
        "runs, taken with `time.process_time` and `time.perf_counter` around "
        "`App.sync()`. Peak memory added is the largest over the runs of the "
        "peak resident set size during the measured poll (VmHWM, reset just "
        "before it) minus the resident size of the idle daemon before its first "
        "poll. The floor is `json.loads` of the "
        "exact response body, best of three, in a fresh process; `download + "
        "json.loads` is the same body fetched with httpx and decoded whole, as "
        "the daemon did before it decoded the listing event by event.",
        "",
        "| events | variant | runs | response | wall | CPU | peak memory added "
        "| json.loads CPU | CPU / json.loads | wall / json.loads "
        "| memory / response | Pipedrive requests |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in polls:
        lines.append(
            f"| {p.events:,} | {p.variant} | {p.runs} | {p.body_bytes / MB:.1f} MB "
            f"| {p.wall_seconds:.3f} s | {p.cpu_seconds:.3f} s "
            f"| {p.peak_added_bytes / MB:.1f} MB | {p.parse_cpu_seconds:.3f} s "
            f"| {p.cpu_ratio:.2f} | {p.wall_ratio:.2f} | {p.memory_ratio:.2f} "
            f"| {p.pipedrive_requests} |"
        )
    lines += [
        "",
        "The floor, the older way of reading the listing, and the first poll "
        "after start (nothing changed), for comparison:",
        "",
        "| events | variant | json.loads CPU | download + json.loads: CPU "
        "| wall | peak memory added | memory / response | first poll CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in polls:
        lines.append(
            f"| {p.events:,} | {p.variant} | {p.parse_cpu_seconds:.3f} s "
            f"| {p.download_parse_cpu_seconds:.3f} s "
            f"| {p.download_parse_wall_seconds:.3f} s "
            f"| {p.floor_peak_added_bytes / MB:.1f} MB "
            f"| {p.floor_peak_added_bytes / p.body_bytes:.2f} "
            f"| {p.first_poll_cpu_seconds:.3f} s |"
        )
    lines += ["", growth_text(polls)]
    lines += ["", POLL_NOTES]
    for label, profile in results.profiles.values():
        lines += [
            "",
            f"Profile of the {label} poll (cProfile, sorted by cumulative time; "
            "the profiler slows Python code down, so read the proportions, not "
            "the seconds):",
            "",
            "```text",
            profile.strip(),
            "```",
        ]
    return "\n".join(lines)


def growth_text(polls: list[PollFigures]) -> str:
    parts = []
    for variant, slopes in growth(polls).items():
        parts.append(
            f"{variant}: CPU slope {slopes['CPU']:.2f}, "
            f"memory slope {slopes['memory']:.2f}"
        )
    return (
        "Growth, as the largest log-log slope between consecutive sizes "
        "(1.0 is linear): " + "; ".join(parts) + "."
    )


POLL_NOTES = """\
Why the poll can cost less than the floor: the daemon decodes the listing one \
event at a time (`bookingsync/sources/jsonstream.py`) and drops an event as soon \
as its change marker matches the snapshot. Each event's objects are freed before \
the next is decoded, so memory is reused and the garbage collector has nothing \
to scan, while `json.loads` builds every event at once. What remains above the \
decoding is the state database: the engine loads every booking's snapshot row \
(`Store.booking_states`), and each changed booking costs an update with several \
SQLite commits. Where a CPU target is missed, the profile below shows the split."""


# Backfill ------------------------------------------------------------------


def backfill_section(backfill: BackfillResult) -> str:
    first = backfill.backfill
    lines = [
        "## 3. Backfill against the rate limit",
        "",
        f"{backfill.bookings:,} new bookings by {backfill.bookers:,} bookers from "
        f"{backfill.companies:,} companies (about 15% on free-mail addresses) "
        "reach an empty state database in one run. The Pipedrive emulator runs "
        f"in its own process with a burst limit of {backfill.burst_limit} "
        "requests per rolling 2-second window, Pipedrive's API-token limit on "
        "its largest plan. Its daily budget is large enough for the run, and "
        f"the daemon's `pipedrive_burst_limit` is {backfill.burst_limit} too. "
        "Produced by `benchmarks/backfill.py`.",
        "",
        "| run | Pipedrive requests | tokens | 429 responses | wall time "
        "| requests/s | fraction of the limit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| backfill | {first.requests:,} | {first.tokens:,} | {first.rate_limited} "
        f"| {first.wall_seconds:.1f} s | {backfill.requests_per_second:.1f} "
        f"| {backfill.fraction_of_limit:.2f} |",
    ]
    for poll in backfill.polls[1:]:
        lines.append(
            f"| {poll.label} | {poll.requests:,} | {poll.tokens:,} "
            f"| {poll.rate_limited} | {poll.wall_seconds:.1f} s | | |"
        )
    lines += time_split_lines(backfill)
    if backfill.fraction_of_limit < FRACTION_TARGET:
        lines += ["", PACER_GAP]
    lines += ["", search_limit_note(backfill)]
    return "\n".join(lines)


def time_split_lines(backfill: BackfillResult) -> list[str]:
    first = backfill.backfill
    split = backfill.split
    ideal = first.requests / (backfill.burst_limit / 2)
    per_booking = first.requests / backfill.bookings
    endpoints = ", ".join(f"{count:,} {name}" for name, count in backfill.by_endpoint)
    return [
        "",
        f"That is {per_booking:.2f} requests and "
        f"{first.tokens / backfill.bookings:.1f} tokens per booking. Requests by "
        f"endpoint over all three runs: {endpoints}.",
        "",
        "The fraction divides the requests by the whole run's wall time, which "
        "includes listing Vyte. A rolling window lets the first 2 seconds carry "
        f"a full window of {backfill.burst_limit}, so a short run can exceed 1.",
        "",
        "The split of the backfill's wall time:",
        "",
        "| wall time | at the limit it would take | daemon CPU | awaiting responses "
        "| elsewhere (pacer sleeping, disk) | responses with x-ratelimit-remaining 0 "
        "| their x-ratelimit-reset, summed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {split.wall_seconds:.1f} s | {ideal:.1f} s | {split.cpu_seconds:.1f} s "
        f"| {split.awaiting_response_seconds:.1f} s | {split.other_seconds:.1f} s "
        f"| {split.window_exhausted} | {split.reset_seconds:.0f} s |",
    ]


def search_limit_note(backfill: BackfillResult) -> str:
    searches = backfill.searches
    general = backfill.backfill.requests / (backfill.burst_limit / 2)
    search = searches / (SEARCH_BURST_LIMIT / 2)
    binding = "the search limit" if search >= general else "the general limit"
    return (
        "The fraction compares the run with the fastest the limits allow. "
        f"Pipedrive allows {backfill.burst_limit} requests per 2 seconds, of which "
        f"at most {SEARCH_BURST_LIMIT} searches on every plan, and both the "
        "emulator and the daemon's pacer enforce both windows. This backfill "
        f"sent {backfill.backfill.requests:,} requests ({general:.0f} s at the "
        f"general limit) including {searches:,} searches ({search:.0f} s at the "
        f"search limit), so {binding} sets the floor of "
        f"{backfill.fastest_seconds:.0f} s."
    )


PACER_GAP = """\
The backfill stays under 0.9 of what the limits allow. The split of its wall \
time above shows where the rest went: the daemon's own CPU, waits for \
responses (each request is sent after the previous reply), and the pacer \
holding requests back."""


# Baseline ------------------------------------------------------------------


def baseline_section(results: Results) -> str:
    lines = [
        "## 4. Against a stateless client",
        "",
        "`benchmarks/baseline.py` is the obvious alternative, a client without "
        "local state. For every booking on every poll it searches each invitee "
        "by email, creating the person (and the organization, after a search) "
        "when missing. It then lists the booker's activities to find the one for "
        "the booking and updates it, or creates it after listing the booker's "
        "open deals and creating one if needed. It runs over the same "
        f"{results.backfill.bookings:,} bookings and the same three polls as "
        "the backfill, against a Pipedrive emulator without a burst limit. To "
        "save time it runs while the backfill waits for the burst window, in "
        "processes at the lowest CPU priority (nice 19).",
        "",
        "| poll | bookingsync requests | tokens | stateless requests | tokens "
        "| ratio of requests | ratio of tokens |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += comparison_rows(results.backfill.polls, results.baseline)
    lines += ["", careful_client_text(results)]
    return "\n".join(lines)


def comparison_rows(ours: list[PollCount], theirs: list[BaselinePoll]) -> list[str]:
    rows = [
        f"| {other.label} | {mine.requests:,} | {mine.tokens:,} "
        f"| {other.requests:,} | {other.tokens:,} "
        f"| {_ratio(other.requests, mine.requests)} "
        f"| {_ratio(other.tokens, mine.tokens)} |"
        for mine, other in zip(ours, theirs, strict=True)
    ]

    ours_requests = sum(p.requests for p in ours)
    ours_tokens = sum(p.tokens for p in ours)
    their_requests = sum(p.requests for p in theirs)
    their_tokens = sum(p.tokens for p in theirs)
    rows.append(
        f"| all three | {ours_requests:,} | {ours_tokens:,} | {their_requests:,} "
        f"| {their_tokens:,} | {_ratio(their_requests, ours_requests)} "
        f"| {_ratio(their_tokens, ours_tokens)} |"
    )
    return rows


def careful_client_text(results: Results) -> str:
    unchanged = results.baseline[1]
    ours = results.backfill.polls[1]
    idle = unchanged.idle_updates
    careful_tokens = unchanged.tokens - UPDATE_TOKENS * idle
    interval = results.cost.poll_interval
    per_day = 24 * 3600 // interval
    return (
        f"In the unchanged poll, {idle:,} of the stateless client's updates "
        "changed no compared field (subject, date, time, duration). A more "
        "careful stateless client that compares before it writes would skip "
        f"them and still spend {careful_tokens:,} tokens on that poll, on "
        f"searches and lists alone. bookingsync spends {ours.tokens:,}. At the "
        f"default poll interval of {interval} s ({per_day:,} polls a day), the "
        "stateless client's unchanged polls would cost "
        f"{unchanged.tokens * per_day:,} tokens a day for these bookings."
    )


def _ratio(theirs: int, ours: int) -> str:
    if ours == 0:
        return "no requests from bookingsync" if theirs else "equal (none)"
    return f"{theirs / ours:.1f} x"
