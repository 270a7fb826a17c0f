"""The interface every scheduling-tool source implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bookingsync.models.booking import Booking
from bookingsync.settings import Settings


@dataclass(frozen=True)
class Skipped:
    """A source event left out on purpose, with the reason."""

    booking_id: str
    reason: str


@dataclass(frozen=True)
class Cancelled:
    """A booking the source reports as cancelled."""

    booking_id: str
    cancelled_at: datetime


@dataclass(frozen=True)
class Invalid:
    """A source event that could not be read; ``booking_id`` may be unknown."""

    booking_id: str | None
    problem: str


@dataclass
class Listing:
    """The result of one poll of a source.

    ``complete_hosts`` names the host scopes listed in full; ``None`` means the
    whole listing was complete. A booking missing from an incomplete scope is
    not treated as vanished.
    """

    bookings: list[Booking] = field(default_factory=list)
    cancelled: list[Cancelled] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    unchanged_ids: set[str] = field(default_factory=set)
    complete: bool = True
    complete_hosts: set[str] | None = None

    def covers(self, host_user_id: str | None) -> bool:
        """Tell whether a booking of this host would have been listed."""
        if self.complete_hosts is None:
            return self.complete
        return host_user_id is not None and host_user_id in self.complete_hosts


class Source(Protocol):
    """A scheduling tool that lists bookings and fetches one by id.

    ``settings`` is read on every call, so a caller may swap in a copy (the
    engine widens ``lookback_days`` for a backfill).
    """

    name: str
    settings: Settings

    def list_bookings(self, known_updates: dict[str, str | None]) -> Listing:
        """List current bookings.

        ``known_updates`` maps booking ids to the change marker last seen; a
        source may report an event whose marker is unchanged in
        ``unchanged_ids`` without parsing it. An empty dict forces a full read.
        """
        ...

    def fetch_booking(
        self, booking_id: str
    ) -> Booking | Cancelled | Skipped | Invalid | None:
        """Fetch one booking; ``None`` when the source no longer has it."""
        ...

    def close(self) -> None: ...
