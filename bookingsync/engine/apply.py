"""Carry out one action against Pipedrive, recording each id as it is created."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loguru import logger

from bookingsync.engine.creates import TrackedCreator, rfc3339
from bookingsync.engine.mapping import (
    CANCELLED_PREFIX,
    SUBJECT_MAX_CHARS,
    RemoteIds,
    activity_fields,
    booking_marker,
    cancellation_note,
    changed_fields,
    organization_name,
    truncate,
)
from bookingsync.engine.plan import Action, ActionKind
from bookingsync.engine.resolve import Resolution, Resolver
from bookingsync.engine.store import Store
from bookingsync.errors import NotFound, Rejected
from bookingsync.models.booking import Booking
from bookingsync.models.state import BookingState, RemoteState
from bookingsync.settings import CancellationMode, Settings
from bookingsync.sinks.pipedrive import PipedriveClient


class Applier:
    def __init__(
        self, settings: Settings, client: PipedriveClient, store: Store
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.creator = TrackedCreator(client, store)
        self.resolver = Resolver(settings, client, store, self.creator)

    def apply(self, action: Action) -> None:
        if action.kind is ActionKind.CANCEL or action.booking is None:
            self.cancel(action)
        else:
            self.upsert(action, action.booking)

    # Create and update ---------------------------------------------------

    def upsert(self, action: Action, booking: Booking) -> None:
        state = action.state
        try:
            activity_id = self._write_activity(booking, state)
        except Rejected as exc:
            # A person merged or a deal deleted in Pipedrive makes the stored
            # ids invalid: look them up again once, then give up.
            logger.warning(
                "Pipedrive rejected the activity of booking {booking} ({error}); "
                "looking up its persons and deal again",
                booking=booking.key,
                error=exc.detail,
            )
            self.resolver.forget_references(booking, state)
            state = self.store.booking_state(booking.key)
            activity_id = self._write_activity(booking, state, full=True)
        if activity_id is None:
            return
        self.store.update_booking(
            booking.key,
            status="confirmed",
            activity_id=activity_id,
            synced_fingerprint=booking.fingerprint(),
            synced_content=booking.model_dump_json(),
            seen_fingerprint=booking.fingerprint(),
            source_updated_at=booking.source_updated_at,
            slot_end=booking.end,
            host_user_id=booking.host_user_id,
            remote_state=RemoteState.ACTIVE.value,
            error=None,
            attempts=0,
            next_retry_at=None,
        )

    def _write_activity(
        self, booking: Booking, state: BookingState | None, full: bool = False
    ) -> int | None:
        """Create or update the activity; None when a deletion is final."""
        organization = organization_name(booking.booker, self.settings)
        resolution = self.resolver.resolve(
            booking, organization, state, trust_snapshot=not full
        )
        desired = activity_fields(booking, resolution.ids, self.settings, organization)
        activity_id = state.activity_id if state else None
        remote = state.remote_state if state else RemoteState.NONE.value

        if activity_id is not None and remote in (
            RemoteState.DELETED.value,
            RemoteState.GONE.value,
        ):
            if (
                remote == RemoteState.GONE.value
                and self.settings.remote_deletions_final
            ):
                logger.info(
                    "Booking {booking} changed but its activity was deleted in "
                    "Pipedrive; not recreated (BOOKINGSYNC_REMOTE_DELETIONS_FINAL)",
                    booking=booking.key,
                )
                self._mark_seen(booking)
                return None
            logger.info(
                "Recreating the activity of booking {booking}: the booking changed "
                "after its activity {activity_id} was deleted",
                booking=booking.key,
                activity_id=activity_id,
            )
            activity_id = None
        if activity_id is None:
            return self.create_activity(booking, desired, resolution)
        previous = {} if full else self.previous_fields(state, resolution.ids)
        changes = changed_fields(previous, desired)
        return self.update_activity(booking, activity_id, changes, desired, resolution)

    def _mark_seen(self, booking: Booking) -> None:
        self.store.update_booking(
            booking.key,
            seen_fingerprint=booking.fingerprint(),
            synced_fingerprint=booking.fingerprint(),
            synced_content=booking.model_dump_json(),
            source_updated_at=booking.source_updated_at,
        )

    def previous_fields(
        self, state: BookingState | None, ids: RemoteIds
    ) -> dict[str, Any]:
        """Return the activity body last written, rebuilt from the snapshot."""
        content = state.synced() if state else None
        if content is None or state is None:
            return {}
        old = Booking.from_content(content)
        old_ids = RemoteIds(
            tuple(state.persons()), state.org_id, state.deal_id, ids.owner_id
        )
        old_org = organization_name(old.booker, self.settings)
        fields = activity_fields(old, old_ids, self.settings, old_org)
        if state.remote_state == RemoteState.CANCELLED.value:
            # The cancelled activity carries other values; restore them all.
            fields["subject"] = fields["busy"] = fields["note"] = None
        return fields

    def create_activity(
        self, booking: Booking, body: dict[str, Any], resolution: Resolution
    ) -> int:
        marker = booking_marker(booking.key)
        if resolution.may_have_activity:
            # The mapping may have been lost: adopt an activity carrying the
            # booking's marker rather than creating a second one.
            existing = self._find_marked_activity(marker, resolution.ids, None)
            if existing is not None:
                logger.warning(
                    "Adopted existing activity {activity_id} for booking {booking}",
                    activity_id=existing,
                    booking=booking.key,
                )
                self.client.update("activities", existing, _patchable(body))
                self.store.update_booking(booking.key, activity_id=existing)
                return existing

        activity_id, existed = self.creator.create(
            booking.key,
            "activities",
            booking.key,
            body,
            find=lambda since: self._find_marked_activity(
                marker, resolution.ids, since
            ),
            remember=lambda item_id: self.store.update_booking(
                booking.key, activity_id=item_id
            ),
        )
        if existed:
            self.client.update("activities", activity_id, _patchable(body))
        else:
            logger.info(
                "Created activity {activity_id} for booking {booking}",
                activity_id=activity_id,
                booking=booking.key,
            )
        return activity_id

    def _find_marked_activity(
        self, marker: str, ids: RemoteIds, since: datetime | None
    ) -> int | None:
        """Find the activity whose note carries ``marker`` among related ones."""
        filters: dict[str, Any]
        if ids.deal_id is not None:
            filters = {"deal_id": ids.deal_id}
        elif ids.person_ids:
            filters = {"person_id": ids.person_ids[0]}
        elif since is not None:
            filters = {"updated_since": rfc3339(since)}
        else:
            return None
        needle = marker + "</p>"
        for activity in self.client.list_all("/api/v2/activities", **filters):
            if needle in str(activity.get("note") or "") and not activity.get(
                "is_deleted"
            ):
                return int(activity["id"])
        return None

    def update_activity(
        self,
        booking: Booking,
        activity_id: int,
        changes: dict[str, Any],
        desired: dict[str, Any],
        resolution: Resolution,
    ) -> int | None:
        if not changes:
            return activity_id
        try:
            self.client.update("activities", activity_id, changes)
        except NotFound:
            if self.settings.remote_deletions_final:
                logger.info(
                    "Activity {activity_id} of booking {booking} was deleted in "
                    "Pipedrive; not recreated (BOOKINGSYNC_REMOTE_DELETIONS_FINAL)",
                    activity_id=activity_id,
                    booking=booking.key,
                )
                self.store.update_booking(
                    booking.key, remote_state=RemoteState.GONE.value
                )
                self._mark_seen(booking)
                return None
            logger.warning(
                "Activity {activity_id} of booking {booking} was deleted in "
                "Pipedrive; the booking changed, so a new activity is created",
                activity_id=activity_id,
                booking=booking.key,
            )
            self.store.update_booking(booking.key, activity_id=None)
            return self.create_activity(booking, desired, resolution)
        logger.info(
            "Updated activity {activity_id} for booking {booking}: {fields}",
            activity_id=activity_id,
            booking=booking.key,
            fields=", ".join(sorted(changes)),
        )
        return activity_id

    # Cancellation --------------------------------------------------------

    def cancel(self, action: Action) -> None:
        state = action.state
        if state is None or state.activity_id is None:
            self.store.update_booking(action.key, status="cancelled")
            return
        cancelled_at = action.cancelled_at or datetime.now(UTC)
        try:
            if self.settings.cancellation_mode is CancellationMode.DELETE:
                self.client.delete("activities", state.activity_id)
                remote = RemoteState.DELETED
            else:
                fields = self.cancel_fields(state, cancelled_at)
                self.client.update("activities", state.activity_id, fields)
                remote = RemoteState.CANCELLED
        except NotFound:
            logger.warning(
                "Activity {activity_id} of cancelled booking {booking} is already "
                "gone from Pipedrive",
                activity_id=state.activity_id,
                booking=action.key,
            )
            remote = RemoteState.DELETED
        self.store.update_booking(
            action.key,
            status="cancelled",
            remote_state=remote.value,
            error=None,
            attempts=0,
            next_retry_at=None,
        )
        logger.info(
            "Cancelled activity {activity_id} for booking {booking} ({mode})",
            activity_id=state.activity_id,
            booking=action.key,
            mode=remote.value,
        )

    def cancel_fields(
        self, state: BookingState, cancelled_at: datetime
    ) -> dict[str, Any]:
        content = state.synced()
        if content is None:
            return {"busy": False}
        booking = Booking.from_content(content)
        ids = RemoteIds(tuple(state.persons()), state.org_id, state.deal_id, None)
        organization = organization_name(booking.booker, self.settings)
        fields = activity_fields(booking, ids, self.settings, organization)
        return {
            "subject": truncate(
                CANCELLED_PREFIX + fields["subject"], SUBJECT_MAX_CHARS
            ),
            "busy": False,
            "note": cancellation_note(fields["note"], cancelled_at),
        }


def _patchable(body: dict[str, Any]) -> dict[str, Any]:
    """Return a create body as a PATCH body (the same keys are writable)."""
    return dict(body)
