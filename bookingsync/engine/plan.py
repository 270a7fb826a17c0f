"""Decide what each booking needs, as small action values, without side effects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bookingsync.models.booking import Booking
from bookingsync.models.state import BookingState, RemoteState


class ActionKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Action:
    """One change to bring Pipedrive in line with one booking."""

    kind: ActionKind
    key: str
    booking: Booking | None = None
    state: BookingState | None = None
    cancelled_at: datetime | None = None
    reason: str = ""

    def describe(self) -> str:
        title = self.booking.title if self.booking else ""
        when = (
            f" at {self.booking.start:%Y-%m-%d %H:%M} UTC"
            if self.booking and not self.booking.all_day
            else ""
        )
        text = f"{self.kind.value:<7} {self.key}"
        if title:
            text += f" {title!r}{when}"
        if self.reason:
            text += f" ({self.reason})"
        return text


def plan_booking(booking: Booking, state: BookingState | None) -> Action | None:
    """Return the action a confirmed booking needs, or None when it is in sync."""
    if state is None or state.synced_fingerprint is None:
        reason = "resuming" if state and state.activity_id else "new booking"
        return Action(ActionKind.CREATE, booking.key, booking, state, reason=reason)
    if state.remote_state == RemoteState.DELETED.value:
        return Action(
            ActionKind.CREATE, booking.key, booking, state, reason="confirmed again"
        )
    if state.remote_state == RemoteState.CANCELLED.value:
        return Action(
            ActionKind.UPDATE, booking.key, booking, state, reason="confirmed again"
        )
    if state.synced_fingerprint == booking.fingerprint() and state.error is None:
        return None
    return Action(ActionKind.UPDATE, booking.key, booking, state, reason="changed")


def plan_cancel(
    key: str, state: BookingState | None, cancelled_at: datetime
) -> Action | None:
    """Return the cancel action for a booking the source cancelled or lost."""
    if state is None or state.remote_state in (
        RemoteState.CANCELLED.value,
        RemoteState.DELETED.value,
        RemoteState.GONE.value,
    ):
        return None
    if state.activity_id is None and state.synced_fingerprint is None:
        return None
    return Action(ActionKind.CANCEL, key, None, state, cancelled_at=cancelled_at)
