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
    }


def _last_success(store: Store) -> str | None:
    with store.session() as session:
        run = session.exec(
            select(Run)
            .where(Run.outcome == "ok", Run.dry_run == False)  # noqa: E712
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


def render_status(data: dict[str, Any]) -> str:
    """Render the status as readable text tables."""
    lines = ["Last runs:"]
    header = f"  {'id':>4}  {'started (UTC)':<19}  {'secs':>6}  {'trigger':<11}  "
    header += (
        f"{'outcome':<8} {'new':>4} {'upd':>4} {'canc':>4} {'fail':>4} {'reqs':>5}"
    )
    lines.append(header)
    for run in data["runs"]:
        started = (run["started_at"] or "")[:19].replace("T", " ")
        seconds = run["duration_seconds"]
        lines.append(
            f"  {run['id']:>4}  {started:<19}  "
            f"{seconds if seconds is not None else '-':>6}  "
            f"{run['trigger'] + ('/dry' if run['dry_run'] else ''):<11}  "
            f"{run['outcome']:<8} {run['created']:>4} {run['updated']:>4} "
            f"{run['cancelled']:>4} {run['failed']:>4} {run['pipedrive_requests']:>5}"
        )
        if run["error"]:
            lines.append(f"        stopped: {run['error']}")
    if not data["runs"]:
        lines.append("  (no runs yet)")
    counts = ", ".join(f"{count} {state}" for state, count in data["bookings"].items())
    lines.append(f"Bookings: {counts or 'none yet'}")
    lines.append(
        f"Last complete run: {data['last_success_at'] or 'never'}"
        + (
            f" ({data['behind_seconds']:.0f} s ago)"
            if data["behind_seconds"] is not None
            else ""
        )
    )
    next_poll = data["next_poll_at"] or "unknown (is the daemon running?)"
    lines.append(f"Next scheduled poll: {next_poll}")
    if data["paused_until"]:
        lines.append(
            f"Pipedrive paused until: {data['paused_until']} (daily budget spent)"
        )
    lines.append("Failing bookings:" if data["failing"] else "Failing bookings: none")
    for item in data["failing"]:
        lines.append(
            f"  {item['booking']} (attempt {item['attempts']}, next retry "
            f"{item['next_retry_at'] or '-'}): {item['error']}"
        )
    return "\n".join(lines)
