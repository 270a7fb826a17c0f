"""Short transactions on the state tables, one per fact recorded.

No transaction stays open across an HTTP call: each method opens a session,
writes, commits and closes, so a crash loses at most the write in progress.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bookingsync.models.state import (
    BookingState,
    DealMap,
    Intent,
    Meta,
    OrganizationMap,
    PersonMap,
    Run,
    utcnow,
)

RETRY_BASE_SECONDS = 60
RETRY_CAP_SECONDS = 6 * 3600
USERS_CACHE_TTL = timedelta(hours=24)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # Bookings ------------------------------------------------------------

    def booking_states(self, source: str) -> dict[str, BookingState]:
        """Return every booking of a source, keyed by booking id, for planning.

        The values are plain result rows with every column of ``BookingState``
        except the stored content, which planning does not need and which is
        most of the table's size. They are read-only: read the full row with
        ``booking_state`` before changing a booking.
        """
        columns = [
            column
            for column in BookingState.__table__.columns  # type: ignore[attr-defined]
            if column.name not in ("synced_content", "seen_content")
        ]
        with self.session() as session:
            rows = session.exec(
                select(*columns).where(BookingState.source == source)
            ).all()
        # A row supports attribute access like the model, without the cost of
        # building 50,000 model objects on every poll.
        return {row.booking_id: cast(BookingState, row) for row in rows}

    def booking_state(self, key: str) -> BookingState | None:
        with self.session() as session:
            return session.get(BookingState, key)

    def update_booking(self, key: str, **values: Any) -> BookingState:
        """Set columns of one booking row, creating the row when it is new."""
        with self.session() as session:
            row = session.get(BookingState, key)
            if row is None:
                source, booking_id = key.split(":", 1)
                row = BookingState(
                    key=key, source=source, booking_id=booking_id, status="new"
                )
            for name, value in values.items():
                if name == "person_ids":
                    value = json.dumps(list(value))
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
            return row

    def record_failure(
        self, key: str, error: str, now: datetime, *, permanent: bool = False
    ) -> BookingState:
        """Record a booking's error and when to try it again.

        Transient failures are retried with a growing delay. A ``permanent``
        one (a rejection, invalid data) waits until the booking changes or an
        admin runs ``bookingsync retry``: ``next_retry_at`` stays empty.
        """
        row = self.booking_state(key)
        attempts = (row.attempts if row else 0) + 1
        delay = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempts - 1))
        retry_at = None if permanent else now + timedelta(seconds=delay)
        return self.update_booking(
            key, error=error[:2000], attempts=attempts, next_retry_at=retry_at
        )

    def failed_bookings(self) -> Sequence[BookingState]:
        with self.session() as session:
            return session.exec(
                select(BookingState)
                .where(col(BookingState.error).is_not(None))
                .order_by(col(BookingState.updated_at).desc())
            ).all()

    # Mappings ------------------------------------------------------------

    def person_id(self, email: str) -> int | None:
        with self.session() as session:
            row = session.get(PersonMap, email)
            return row.person_id if row else None

    def remember_person(self, email: str, person_id: int) -> None:
        self._merge(PersonMap(email=email, person_id=person_id))

    def forget_person(self, email: str) -> None:
        self._delete(PersonMap, email)

    def organization_id(self, name: str) -> int | None:
        with self.session() as session:
            row = session.get(OrganizationMap, name.casefold())
            return row.org_id if row else None

    def remember_organization(self, name: str, org_id: int) -> None:
        self._merge(OrganizationMap(name_key=name.casefold(), org_id=org_id))

    def deal_id(self, owner_key: str) -> int | None:
        with self.session() as session:
            row = session.get(DealMap, owner_key)
            return row.deal_id if row else None

    def remember_deal(self, owner_key: str, deal_id: int) -> None:
        self._merge(DealMap(owner_key=owner_key, deal_id=deal_id))

    def forget_deal_id(self, deal_id: int) -> None:
        with self.session() as session:
            for row in session.exec(select(DealMap).where(DealMap.deal_id == deal_id)):
                session.delete(row)
            session.commit()

    def _merge(self, row: Any) -> None:
        with self.session() as session:
            session.merge(row)
            session.commit()

    def _delete(self, model: Any, key: str) -> None:
        with self.session() as session:
            row = session.get(model, key)
            if row is not None:
                session.delete(row)
                session.commit()

    # Intents (see models.state.Intent) ----------------------------------

    def intent(self, booking_key: str, kind: str, natural_key: str) -> Intent | None:
        with self.session() as session:
            return session.get(Intent, (booking_key, kind, natural_key))

    def record_intent(self, booking_key: str, kind: str, natural_key: str) -> Intent:
        """Write the intent row, keeping the earliest time if one exists."""
        with self.session() as session:
            row = session.get(Intent, (booking_key, kind, natural_key))
            if row is None:
                row = Intent(
                    booking_key=booking_key, kind=kind, natural_key=natural_key
                )
                session.add(row)
                session.commit()
            return row

    def clear_intent(self, booking_key: str, kind: str, natural_key: str) -> None:
        with self.session() as session:
            row = session.get(Intent, (booking_key, kind, natural_key))
            if row is not None:
                session.delete(row)
                session.commit()

    def get_meta(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(Meta, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._delete(Meta, key)
        else:
            self._merge(Meta(key=key, value=value))

    def active_states(self, source: str) -> Sequence[BookingState]:
        with self.session() as session:
            return session.exec(
                select(BookingState).where(
                    BookingState.source == source,
                    BookingState.remote_state == "active",
                    col(BookingState.activity_id).is_not(None),
                )
            ).all()

    # Pipedrive users, cached because listing them costs a list request ----

    def cached_users(self) -> dict[str, int] | None:
        """Return the cached map of user email to id, if younger than a day."""
        with self.session() as session:
            row = session.get(Meta, "pipedrive_users")
        if row is None:
            return None
        cached = json.loads(row.value)
        fetched = datetime.fromisoformat(cached["fetched_at"])
        if utcnow() - fetched > USERS_CACHE_TTL:
            return None
        return {str(k): int(v) for k, v in cached["users"].items()}

    def cache_users(self, users: dict[str, int]) -> None:
        value = json.dumps({"fetched_at": utcnow().isoformat(), "users": users})
        self._merge(Meta(key="pipedrive_users", value=value))

    # Runs ----------------------------------------------------------------

    def start_run(self, trigger: str, mode: str, dry_run: bool) -> Run:
        run = Run(trigger=trigger, mode=mode, dry_run=dry_run)
        with self.session() as session:
            session.add(run)
            session.commit()
            session.refresh(run)
        return run

    def finish_run(self, run: Run) -> None:
        run.finished_at = utcnow()
        with self.session() as session:
            session.merge(run)
            session.commit()

    def recent_runs(self, limit: int = 10) -> Sequence[Run]:
        with self.session() as session:
            return session.exec(
                select(Run).order_by(col(Run.id).desc()).limit(limit)
            ).all()
