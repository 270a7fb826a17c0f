"""The normalized booking: what every source produces and the engine maps.

A ``Booking`` holds only the fields that reach Pipedrive, so its fingerprint
changes exactly when something we would write changes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class Invitee(BaseModel):
    """An external participant; ``email`` is trimmed and lower-cased."""

    model_config = ConfigDict(frozen=True)

    email: str
    name: str | None = None
    phone: str | None = None
    company: str | None = None


class Booking(BaseModel):
    """One confirmed meeting, independent of the scheduling tool it came from.

    ``start`` and ``end`` are UTC. For an all-day slot ``local_date`` is the
    date in the event's time zone, which is what the calendar shows.
    ``invitees`` lists external participants only, booker first.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    booking_id: str
    title: str
    timezone: str
    start: datetime
    end: datetime
    all_day: bool = False
    local_date: str | None = None
    location: str | None = None
    location_url: str | None = None
    host_email: str | None = None
    host_name: str | None = None
    host_user_id: str | None = None
    invitees: tuple[Invitee, ...]
    message: str | None = None
    source_updated_at: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _require_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        return value.astimezone(UTC)

    @property
    def key(self) -> str:
        """The booking's identity across sources: ``<source>:<id>``."""
        return f"{self.source}:{self.booking_id}"

    @property
    def booker(self) -> Invitee:
        return self.invitees[0]

    def mapped_content(self) -> dict[str, Any]:
        """Return the fields that reach Pipedrive, as JSON-ready values."""
        return self.model_dump(mode="json", exclude={"source_updated_at"})

    def fingerprint(self) -> str:
        """Return a stable hash of the mapped fields."""
        canonical = json.dumps(
            self.mapped_content(), sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> Booking:
        return cls.model_validate(content)
