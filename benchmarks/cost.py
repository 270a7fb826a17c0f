"""Cost per booking: Pipedrive requests and tokens for each kind of change.

One sandbox lives through a scripted story, and each step is one poll whose
Pipedrive requests and tokens the emulator counts. The steps are a new booker
from a new company, the same guest booking again, a colleague from the same
company, a reschedule, a cancellation, then polls in which nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Sandbox, SyncCost, in_days, sandbox
from bookingsync.engine.sync import Mode

JANE = {
    "full_name": "Jane Roe",
    "email": "jane.roe@acme.example",
    "company": "Acme",
    "phone": "+33 1 42 68 53 00",
}
JOHN = {"full_name": "John Poe", "email": "john.poe@acme.example", "company": "Acme"}
WARM_UP = {"full_name": "Wanda Up", "email": "wanda@warmup.example"}


@dataclass(frozen=True)
class Target:
    """A target from the issue and the check that decides whether it is met."""

    text: str
    check: Callable[[SyncCost], bool]


@dataclass(frozen=True)
class CostRow:
    scenario: str
    cost: SyncCost
    target: Target | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.check(self.cost)


@dataclass(frozen=True)
class CostResult:
    rows: list[CostRow]
    warm_up: SyncCost
    poll_interval: int


TARGETS = {
    "new booker": Target("at most 2 searches", lambda c: c.searches <= 2),
    "returning guest": Target("no search", lambda c: c.searches == 0),
    "reschedule": Target(
        "a single update", lambda c: c.requests == 1 and c.writes == 1
    ),
    "unchanged poll": Target("0 Pipedrive requests", lambda c: c.requests == 0),
}


def run(workdir: Path) -> CostResult:
    """Run the story once and return one row per step."""
    with sandbox(workdir / "cost") as box:
        # The first booking of a day also lists Pipedrive's users (cached for
        # 24 hours), so it is measured apart from the per-booking figures.
        box.add_booking(WARM_UP, in_days(2))
        warm_up = _checked_sync(box)
        rows = _story(box)
        return CostResult(rows, warm_up, box.app.settings.poll_interval)


def _story(box: Sandbox) -> list[CostRow]:
    rows: list[CostRow] = []

    def step(scenario: str, mode: Mode = Mode.POLL) -> None:
        rows.append(CostRow(scenario, _checked_sync(box, mode), TARGETS.get(scenario)))

    first = box.add_booking(JANE, in_days(3))
    step("new booker")
    box.add_booking(JANE, in_days(10, hour=14), title="Follow-up call")
    step("returning guest")
    box.add_booking(JOHN, in_days(4, hour=11))
    step("second booker from a known company")

    moved = in_days(6, hour=15)
    box.vyte.reschedule(first["_id"], moved, moved.replace(minute=30))
    step("reschedule")
    box.vyte.cancel(first["_id"])
    step("cancellation")
    step("unchanged poll")
    step("unchanged full rescan", Mode.FULL)
    return rows


def _checked_sync(box: Sandbox, mode: Mode = Mode.POLL) -> SyncCost:
    report, cost = box.sync(mode)
    if not report.ok:
        raise RuntimeError(
            f"benchmark sync failed: {report.failed or report.stopped}; "
            "the figures would be meaningless"
        )
    return cost
