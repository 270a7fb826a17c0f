"""Collect and render what ``bookingsync status`` shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, func, select

from bookingsync.engine.store import Store
from bookingsync.models.state import BookingState, Run


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def collect_status(
    store: Store, run_limit: int = 10, now: datetime | None = None
) -> dict[str, Any]:
    """Return recent runs, booking counts and failing bookings as plain data."""
    now = now or datetime.now(UTC)
    runs = [
        {
            "id": run.id,
            "trigger": run.trigger,
            "mode": run.mode,
            "dry_run": run.dry_run,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "duration_seconds": (
                round((run.finished_at - run.started_at).total_seconds(), 2)
                if run.finished_at
                else None
            ),
            "outcome": run.outcome,
            "listed": run.listed,
            "created": run.created,
            "updated": run.updated,
            "cancelled": run.cancelled,
            "failed": run.failed,
            "pipedrive_requests": run.requests,
            "pipedrive_tokens": run.tokens,
            "error": run.error,
            "problems": json.loads(run.problems or "{}"),
        }
        for run in store.recent_runs(run_limit)
    ]
    failing = [
        {
            "booking": row.key,
            "error": row.error,
            "attempts": row.attempts,
            "next_retry_at": _iso(row.next_retry_at),
        }
        for row in store.failed_bookings()
    ]
    return {
        "runs": runs,
        "bookings": _booking_counts(store),
        "failing": failing,
        "last_success_at": _last_success(store),
        "behind_seconds": _behind_seconds(store, now),
        "next_poll_at": store.get_meta("daemon_next_poll_at"),
        "paused_until": store.get_meta("pipedrive_paused_until"),
        "deleted_in_pipedrive": _deleted_in_pipedrive(store),
    }


def _deleted_in_pipedrive(store: Store) -> list[dict[str, Any]]:
    """List bookings whose activity someone deleted in Pipedrive."""
    with store.session() as session:
        rows = session.exec(
            select(BookingState).where(BookingState.remote_state == "gone")
        ).all()
    return [{"booking": row.key, "activity_id": row.activity_id} for row in rows]


def _last_success(store: Store) -> str | None:
    with store.session() as session:
        run = session.exec(
            select(Run)
            .where(col(Run.outcome).in_(("ok", "partial")))
            .order_by(col(Run.id).desc())
            .limit(1)
        ).first()
    return _iso(run.finished_at) if run else None


def _behind_seconds(store: Store, now: datetime) -> float | None:
    """Return how old the snapshot is: seconds since the last complete run."""
    last = _last_success(store)
    if last is None:
        return None
    return round((now - datetime.fromisoformat(last)).total_seconds(), 1)


def _booking_counts(store: Store) -> dict[str, int]:
    with store.session() as session:
        rows = session.exec(
            select(BookingState.remote_state, func.count()).group_by(
                BookingState.remote_state
            )
        ).all()
    return {str(state): int(count) for state, count in rows}


STATE_LABELS = {"none": "not synced yet"}


def render_status(data: dict[str, Any]) -> str:
    """Render the status as readable text tables."""
    lines = _run_table(data["runs"])
    counts = ", ".join(
        f"{count} {STATE_LABELS.get(state, state)}"
        for state, count in data["bookings"].items()
    )
    lines.append(f"Bookings: {counts or 'none yet'}")

    last = data["last_success_at"]
    behind = data["behind_seconds"]
    ago = f" ({behind:.0f} s ago)" if behind is not None else ""
    lines.append(f"Last finished run: {_short_time(last) if last else 'never'}{ago}")
    next_poll = data["next_poll_at"]
    lines.append(
        "Next scheduled poll: "
        + (_short_time(next_poll) if next_poll else "unknown (is the daemon running?)")
    )
    if data["paused_until"]:
        lines.append(
            f"Pipedrive paused until {_short_time(data['paused_until'])} "
            "(daily API budget spent)"
        )

    lines.extend(_failing_lines(data))
    gone = data["deleted_in_pipedrive"]
    if gone:
        lines.append(
            "Activities deleted in Pipedrive (recreated if the booking changes):"
        )
        lines.extend(
            f"  {item['booking']} (activity {item['activity_id']})" for item in gone
        )
    return "\n".join(lines)


def _run_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["Last runs:"]
    lines.append(
        f"  {'id':>4}  {'started (UTC)':<19}  {'secs':>6}  {'trigger':<11}  "
        f"{'outcome':<10} {'new':>4} {'upd':>4} {'canc':>4} {'fail':>4} {'reqs':>5}"
    )
    for run in runs:
        seconds = run["duration_seconds"]
        lines.append(
            f"  {run['id']:>4}  {_short_time(run['started_at']):<19}  "
            f"{f'{seconds:.1f}' if seconds is not None else '-':>6}  "
            f"{run['trigger']:<11}  {run['outcome']:<10} {run['created']:>4} "
            f"{run['updated']:>4} {run['cancelled']:>4} {run['failed']:>4} "
            f"{run['pipedrive_requests']:>5}"
        )
        if run["error"]:
            lines.append(f"        {run['outcome']}: {run['error']}")
    if not runs:
        lines.append("  (no runs yet)")
    return lines


def _failing_lines(data: dict[str, Any]) -> list[str]:
    failing = data["failing"]
    lines = ["Failing bookings:" if failing else "Failing bookings: none"]
    for item in failing:
        retry = item["next_retry_at"]
        when = (
            f"next retry {_short_time(retry)}"
            if retry
            else "waits until it changes or `bookingsync retry`"
        )
        lines.append(
            f"  {item['booking']} (attempt {item['attempts']}, {when}): {item['error']}"
        )
    # Events without an id have no booking row; the last run lists them.
    known = {item["booking"] for item in failing}
    last = data["runs"][0] if data["runs"] else None
    for label, problem in (last["problems"] if last else {}).items():
        if f"vyte:{label}" not in known and label not in known:
            lines.append(f"  {label} (last run): {problem}")
    return lines


def _short_time(value: str | None) -> str:
    """Return an ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    return (value or "")[:19].replace("T", " ")
