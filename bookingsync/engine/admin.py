"""Administrative operations: resync one booking, retry failures, forget a
person, prune old snapshots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from loguru import logger
from sqlmodel import col, delete, select

from bookingsync.engine.plan import Action, ActionKind, plan_cancel
from bookingsync.engine.store import Store
from bookingsync.engine.sync import SyncEngine, SyncReport
from bookingsync.models.booking import Booking
from bookingsync.models.state import BookingState, PersonMap, RemoteState, Run
from bookingsync.sources.base import Cancelled, Invalid, Skipped


class UnknownBooking(LookupError):
    def __init__(self, booking_id: str, reason: str) -> None:
        self.booking_id = booking_id
        super().__init__(f"booking {booking_id!r} {reason}")


def resync(engine: SyncEngine, booking_id: str) -> SyncReport:
    """Fetch one booking from the source and push every mapped field again.

    Raises ``UnknownBooking`` when the source has no such booking or skips it.
    """
    booking_id = booking_id.removeprefix(f"{engine.source.name}:")
    fetched = engine.source.fetch_booking(booking_id)
    key = f"{engine.source.name}:{booking_id}"
    state = engine.store.booking_state(key)
    if fetched is None:
        raise UnknownBooking(booking_id, f"was not found in {engine.source.name}")
    if isinstance(fetched, Skipped):
        raise UnknownBooking(booking_id, f"is not synced: {fetched.reason}")
    if isinstance(fetched, Invalid):
        raise UnknownBooking(booking_id, f"is invalid: {fetched.problem}")

    report = SyncReport(run_id=None)
    if isinstance(fetched, Cancelled):
        action = plan_cancel(key, state, fetched.cancelled_at)
        if action is not None:
            engine.applier.apply(action)
            report.actions.append(action)
        return report
    action = _full_push(fetched, state)
    engine.applier.apply(action)
    report.actions.append(action)
    logger.info("Resynced booking {booking}", booking=key)
    return report


def _full_push(booking: Booking, state: BookingState | None) -> Action:
    """Plan an update that sends every field, or a create when none exists."""
    if state is None or state.activity_id is None:
        return Action(ActionKind.CREATE, booking.key, booking, state, reason="resync")
    if state.remote_state in (RemoteState.DELETED.value, RemoteState.GONE.value):
        return Action(ActionKind.CREATE, booking.key, booking, state, reason="resync")
    # Without a snapshot, every field differs from the "previous" body.
    blank = state.model_copy(update={"synced_content": None})
    return Action(ActionKind.UPDATE, booking.key, booking, blank, reason="resync")


def make_failures_due(store: Store, now: datetime) -> int:
    """Mark every failed booking as due now; return how many there are."""
    with store.session() as session:
        rows = session.exec(
            select(BookingState).where(col(BookingState.error).is_not(None))
        ).all()
        for row in rows:
            row.next_retry_at = now - timedelta(seconds=1)
            # Forget the fingerprint so a rejected, unchanged booking is retried.
            row.seen_fingerprint = None
            session.add(row)
        session.commit()
        return len(rows)


@dataclass
class Forgotten:
    persons: int = 0
    bookings: int = 0
    runs: int = 0


def forget_email(store: Store, email: str) -> Forgotten:
    """Erase what the local state stores about one email address.

    The person's mapping is removed, and every stored booking snapshot,
    error and run problem that mentions the address is cleared. Pipedrive
    ids stay, so later polls update the same items instead of creating new
    ones. A booking that still names the person in the source brings the
    data back on its next change.
    """
    email = email.strip().lower()
    result = Forgotten()
    with store.session() as session:
        row = session.get(PersonMap, email)
        if row is not None:
            session.delete(row)
            result.persons = 1
        for state in session.exec(select(BookingState)).all():
            if _mentions(email, state.synced_content, state.seen_content, state.error):
                state.synced_content = None
                state.seen_content = None
                state.error = (
                    None
                    if state.error and email in state.error.lower()
                    else state.error
                )
                session.add(state)
                result.bookings += 1
        for run in session.exec(select(Run)).all():
            if _mentions(email, run.problems, run.error):
                problems = json.loads(run.problems or "{}")
                run.problems = json.dumps(
                    {k: v for k, v in problems.items() if email not in v.lower()}
                )
                if run.error and email in run.error.lower():
                    run.error = "(erased)"
                session.add(run)
                result.runs += 1
        session.commit()
    return result


def _mentions(email: str, *texts: str | None) -> bool:
    return any(text is not None and email in text.lower() for text in texts)


def prune(store: Store, now: datetime, retention_days: int) -> tuple[int, int]:
    """Delete snapshots of bookings that ended, and runs that started, long ago.

    Returns the number of booking rows and run rows deleted. Bookings with a
    recorded error are kept so that ``status`` still shows them.
    """
    cutoff = now - timedelta(days=retention_days)
    with store.session() as session:
        bookings = session.exec(
            delete(BookingState).where(
                col(BookingState.slot_end) < cutoff,
                col(BookingState.error).is_(None),
            )
        )
        runs = session.exec(delete(Run).where(col(Run.started_at) < cutoff))
        session.commit()
    return bookings.rowcount, runs.rowcount
