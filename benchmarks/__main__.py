"""Run every benchmark against the sandbox emulators and write the report.

Usage, from the repository root::

    .venv/bin/python -m benchmarks            # full run, writes docs/benchmarks.md
    .venv/bin/python -m benchmarks --quick    # smoke run, prints the report

The full run takes about seven minutes on two cores. Most of it is the
backfill, which is paced by the burst limit and leaves the CPU to the
stateless baseline running alongside.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import backfill, baseline, cost, poll, report
from benchmarks.harness import ROOT, isolate_environment


@dataclass(frozen=True)
class Scale:
    # Events per poll, each with the number of measured polls.
    poll_sizes: dict[int, int]
    backfill_bookings: int


# Repeated polls of 10,000 events differed by a few percent in CPU time, so a
# single poll of 50,000 events keeps the full run short enough.
FULL = Scale(poll_sizes={1_000: 3, 10_000: 3, 50_000: 1}, backfill_bookings=5_000)
QUICK = Scale(poll_sizes={1_000: 1, 5_000: 1}, backfill_bookings=300)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    scale = QUICK if arguments.quick else FULL
    isolate_environment()
    started = datetime.now(UTC)
    clock = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bookingsync-bench-") as folder:
        workdir = Path(folder)
        step("cost per booking")
        cost_result = cost.run(workdir)
        step(f"poll scaling over {', '.join(f'{n:,}' for n in scale.poll_sizes)}")
        poll_result = poll.run(workdir, scale.poll_sizes)
        step(
            f"backfill of {scale.backfill_bookings:,} bookings, with the "
            "stateless baseline over the same bookings alongside"
        )
        _, events = backfill.booking_history(scale.backfill_bookings)
        moved = backfill.changed_ids(events)
        stateless = baseline.BaselineProcess(workdir / "baseline", events, moved)
        backfill_result = backfill.run(workdir / "backfill", events)
        baseline_result = stateless.result()

    results = report.Results(
        command=command_line(arguments),
        started=started,
        seconds=time.perf_counter() - clock,
        cost=cost_result,
        polls=poll_result.figures,
        profiles=poll_result.profiles,
        backfill=backfill_result,
        baseline=baseline_result,
    )
    text = report.render(results)
    if arguments.output is None:
        sys.stdout.write(text)
    else:
        arguments.output.write_text(text, encoding="utf-8")
        step(f"wrote {arguments.output}")
    return 0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Measure bookingsync against the sandbox emulators on 127.0.0.1 "
            "and write the figures as Markdown."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "smoke run with small sizes (polls of 1,000 and 5,000 events, a "
            "backfill of 300 bookings); prints the report unless --output is set"
        ),
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Markdown file to write (default: docs/benchmarks.md for a full run)",
    )
    arguments = parser.parse_args(argv)
    if arguments.output is None and not arguments.quick:
        arguments.output = ROOT / "docs" / "benchmarks.md"
    return arguments


def command_line(arguments: argparse.Namespace) -> str:
    words = [".venv/bin/python", "-m", "benchmarks"]
    if arguments.quick:
        words.append("--quick")
    default = ROOT / "docs" / "benchmarks.md"
    if arguments.output is not None and arguments.output.resolve() != default:
        words += ["--output", str(arguments.output)]
    return shlex.join(words)


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
