"""State tables: the booking snapshot, the Pipedrive id mapping and run history.

The snapshot of a booking (``synced_fingerprint`` and ``synced_content``) is
written only after every Pipedrive write for it succeeded, while each Pipedrive
id is written as soon as its create succeeds. A crash therefore replays at most
the booking in flight, and the recorded ids stop that replay from creating
the same item twice.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as naive UTC and read back as aware UTC.

    This behaves the same on SQLite, which keeps no offset, and on
    PostgreSQL, where the session time zone would otherwise shift values.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Any
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; use an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: datetime | None, dialect: Any
    ) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class RemoteState(StrEnum):
    """The last known state of a booking's activity in Pipedrive."""

    NONE = "none"  # Nothing written yet.
    ACTIVE = "active"
    CANCELLED = "cancelled"  # Marked cancelled in Pipedrive.
    DELETED = "deleted"  # Deleted by bookingsync on cancellation.
    GONE = "gone"  # Deleted or merged away in Pipedrive by someone else.


class Meta(SQLModel, table=True):
    __tablename__ = "meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str


class BookingState(SQLModel, table=True):
    """One booking: what the source last showed and what Pipedrive holds."""

    __tablename__ = "booking_state"

    key: str = Field(primary_key=True, max_length=200)
    source: str = Field(index=True, max_length=32)
    booking_id: str = Field(max_length=160)
    host_user_id: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=16)
    slot_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    source_updated_at: str | None = Field(default=None, max_length=64)
    seen_fingerprint: str | None = Field(default=None, max_length=64)
    seen_content: str | None = None
    synced_fingerprint: str | None = Field(default=None, max_length=64)
    synced_content: str | None = None
    org_id: int | None = None
    person_ids: str = "[]"
    deal_id: int | None = None
    activity_id: int | None = None
    remote_state: str = RemoteState.NONE.value
    error: str | None = None
    attempts: int = 0
    next_retry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    def synced(self) -> dict[str, Any] | None:
        return json.loads(self.synced_content) if self.synced_content else None

    def persons(self) -> list[int]:
        return [int(value) for value in json.loads(self.person_ids)]


class PersonMap(SQLModel, table=True):
    """A Pipedrive person known by the normalized (trimmed, lower-case) email."""

    __tablename__ = "person_map"

    email: str = Field(primary_key=True, max_length=320)
    person_id: int


class OrganizationMap(SQLModel, table=True):
    """A Pipedrive organization known by its lower-cased name."""

    __tablename__ = "organization_map"

    name_key: str = Field(primary_key=True, max_length=255)
    org_id: int


class DealMap(SQLModel, table=True):
    """The open deal bookingsync uses for an organization or a person."""

    __tablename__ = "deal_map"

    owner_key: str = Field(primary_key=True, max_length=64)
    deal_id: int


class Intent(SQLModel, table=True):
    """A Pipedrive create that was about to be sent.

    The row is written before the POST and removed once the new id is
    recorded. A row left behind means a run died in between, so the next
    attempt first looks in Pipedrive for the item it may have created.
    """

    __tablename__ = "intent"

    booking_key: str = Field(primary_key=True, max_length=200)
    kind: str = Field(primary_key=True, max_length=32)
    natural_key: str = Field(primary_key=True, max_length=320)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Run(SQLModel, table=True):
    """One sync pass and what it did."""

    __tablename__ = "run"

    id: int | None = Field(default=None, primary_key=True)
    trigger: str = Field(max_length=32)
    mode: str = Field(max_length=16)
    dry_run: bool = False
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str = Field(default="running", max_length=16)
    listed: int = 0
    created: int = 0
    updated: int = 0
    cancelled: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    requests: int = 0
    tokens: int = 0
    error: str | None = None
    problems: str = "[]"
