"""Carry out one action against Pipedrive, recording each id as it is created.

Lookups go to the local mapping first and to Pipedrive's search only when the
mapping does not know the item: a search costs four times a create in
Pipedrive's daily token budget.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loguru import logger

from bookingsync.engine.mapping import (
    CANCELLED_PREFIX,
    SUBJECT_MAX_CHARS,
    RemoteIds,
    activity_fields,
    cancellation_note,
    changed_fields,
    deal_title,
    organization_name,
    person_name,
    truncate,
)
from bookingsync.engine.plan import Action, ActionKind
from bookingsync.engine.store import Store
from bookingsync.errors import NotFound
from bookingsync.models.booking import Booking, Invitee
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
        self._users: dict[str, int] | None = None

    def apply(self, action: Action) -> None:
        if action.kind is ActionKind.CANCEL or action.booking is None:
            self.cancel(action)
        else:
            self.upsert(action, action.booking)

    # Create and update ---------------------------------------------------

    def upsert(self, action: Action, booking: Booking) -> None:
        state = action.state
        organization = organization_name(booking.booker, self.settings)
        ids = self.resolve(booking, organization, state)
        desired = activity_fields(booking, ids, self.settings, organization)

        activity_id = state.activity_id if state else None
        recreate = state is not None and state.remote_state in (
            RemoteState.DELETED.value,
        )
        if activity_id is None or recreate:
            activity_id = self.create_activity(booking, desired)
        else:
            previous = self.previous_fields(state, ids)
            changes = changed_fields(previous, desired)
            activity_id = self.update_activity(booking, activity_id, changes, desired)

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

    def create_activity(self, booking: Booking, body: dict[str, Any]) -> int:
        activity = self.client.create("activities", body)
        activity_id = int(activity["id"])
        self.store.update_booking(booking.key, activity_id=activity_id)
        logger.info(
            "Created activity {activity_id} for booking {booking}",
            activity_id=activity_id,
            booking=booking.key,
        )
        return activity_id

    def update_activity(
        self,
        booking: Booking,
        activity_id: int,
        changes: dict[str, Any],
        desired: dict[str, Any],
    ) -> int:
        if not changes:
            return activity_id
        try:
            self.client.update("activities", activity_id, changes)
        except NotFound:
            logger.warning(
                "Activity {activity_id} of booking {booking} was deleted in "
                "Pipedrive; the booking changed, so a new activity is created",
                activity_id=activity_id,
                booking=booking.key,
            )
            return self.create_activity(booking, desired)
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
                self.client.update(
                    "activities",
                    state.activity_id,
                    self.cancel_fields(state, cancelled_at),
                )
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

    # Resolution of related items -----------------------------------------

    def resolve(
        self, booking: Booking, organization: str | None, state: BookingState | None
    ) -> RemoteIds:
        owner_id = self.owner_for(booking.host_email)
        org_id = self.resolve_organization(booking, organization, owner_id)
        person_ids = []
        for index, invitee in enumerate(
            booking.invitees[: self.settings.max_persons_per_booking]
        ):
            same_company = index == 0 or (
                organization_name(invitee, self.settings) == organization
            )
            person_ids.append(
                self.resolve_person(
                    booking, invitee, org_id if same_company else None, owner_id
                )
            )
        self.store.update_booking(booking.key, person_ids=person_ids)
        deal_id = self.resolve_deal(
            booking, organization, org_id, person_ids[0], owner_id, state
        )
        return RemoteIds(tuple(person_ids), org_id, deal_id, owner_id)

    def owner_for(self, host_email: str | None) -> int | None:
        if host_email is None:
            return None
        if self._users is None:
            self._users = self.store.cached_users()
        if self._users is None:
            self._users = {}
            for user in self.client.users():
                email = str(user.get("email") or "").strip().lower()
                if email and user.get("active_flag", True):
                    self._users[email] = int(user["id"])
            self.store.cache_users(self._users)
        return self._users.get(host_email)

    def resolve_organization(
        self, booking: Booking, name: str | None, owner_id: int | None
    ) -> int | None:
        if name is None or not self.settings.create_organizations:
            return None
        known = self.store.organization_id(name)
        if known is not None:
            return known
        matches = [
            item
            for item in self.client.search("organizations", name, "name")
            if str(item.get("name", "")).casefold() == name.casefold()
        ]
        if matches:
            org_id = min(int(item["id"]) for item in matches)
        else:
            body: dict[str, Any] = {"name": name}
            if owner_id is not None:
                body["owner_id"] = owner_id
            org_id = int(self.client.create("organizations", body)["id"])
            logger.info(
                "Created organization {org_id} {name!r} for booking {booking}",
                org_id=org_id,
                name=name,
                booking=booking.key,
            )
        self.store.remember_organization(name, org_id)
        self.store.update_booking(booking.key, org_id=org_id)
        return org_id

    def resolve_person(
        self,
        booking: Booking,
        invitee: Invitee,
        org_id: int | None,
        owner_id: int | None,
    ) -> int:
        known = self.store.person_id(invitee.email)
        if known is not None:
            return known
        person_id = self.find_person(invitee.email)
        if person_id is None:
            person_id = self.create_person(booking, invitee, org_id, owner_id)
        self.store.remember_person(invitee.email, person_id)
        return person_id

    def find_person(self, email: str) -> int | None:
        """Search by email; only an exactly equal address is a match."""
        matches = [
            int(item["id"])
            for item in self.client.search("persons", email, "email")
            if any(
                str(value).strip().lower() == email
                for value in item.get("emails") or []
            )
        ]
        return min(matches) if matches else None

    def create_person(
        self,
        booking: Booking,
        invitee: Invitee,
        org_id: int | None,
        owner_id: int | None,
    ) -> int:
        body: dict[str, Any] = {
            "name": person_name(invitee),
            "emails": [{"value": invitee.email, "primary": True, "label": "work"}],
        }
        if invitee.phone:
            body["phones"] = [
                {"value": invitee.phone, "primary": True, "label": "work"}
            ]
        if org_id is not None:
            body["org_id"] = org_id
        if owner_id is not None:
            body["owner_id"] = owner_id
        person_id = int(self.client.create("persons", body)["id"])
        logger.info(
            "Created person {person_id} for booking {booking}",
            person_id=person_id,
            booking=booking.key,
        )
        return person_id

    def resolve_deal(
        self,
        booking: Booking,
        organization: str | None,
        org_id: int | None,
        person_id: int,
        owner_id: int | None,
        state: BookingState | None,
    ) -> int | None:
        if not self.settings.create_deals:
            return None
        if state and state.deal_id is not None and state.synced_fingerprint:
            return state.deal_id
        owner_key = f"org:{org_id}" if org_id is not None else f"person:{person_id}"
        deal_id = self.store.deal_id(owner_key)
        if deal_id is not None and self.deal_is_open(deal_id):
            return deal_id
        deal_id = self.find_open_deal(org_id, person_id)
        if deal_id is None:
            deal_id = self.create_deal(
                booking, organization, org_id, person_id, owner_id
            )
        self.store.remember_deal(owner_key, deal_id)
        self.store.update_booking(booking.key, deal_id=deal_id)
        return deal_id

    def deal_is_open(self, deal_id: int) -> bool:
        try:
            deal = self.client.get(f"/api/v2/deals/{deal_id}")
        except NotFound:
            return False
        return (
            bool(deal) and deal.get("status") == "open" and not deal.get("is_deleted")
        )

    def find_open_deal(self, org_id: int | None, person_id: int) -> int | None:
        filters: dict[str, Any] = {"status": "open"}
        if self.settings.pipeline_id is not None:
            filters["pipeline_id"] = self.settings.pipeline_id
        if org_id is not None:
            filters["org_id"] = org_id
        else:
            filters["person_id"] = person_id
        deals = [
            deal
            for deal in self.client.list_all("/api/v2/deals", **filters)
            if org_id is not None or deal.get("org_id") is None
        ]
        return min(int(deal["id"]) for deal in deals) if deals else None

    def create_deal(
        self,
        booking: Booking,
        organization: str | None,
        org_id: int | None,
        person_id: int,
        owner_id: int | None,
    ) -> int:
        body: dict[str, Any] = {
            "title": deal_title(booking, self.settings, organization),
            "person_id": person_id,
        }
        optional = {
            "org_id": org_id,
            "owner_id": owner_id,
            "pipeline_id": self.settings.pipeline_id,
            "stage_id": self.settings.stage_id,
        }
        body.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        deal_id = int(self.client.create("deals", body)["id"])
        logger.info(
            "Created deal {deal_id} for booking {booking}",
            deal_id=deal_id,
            booking=booking.key,
        )
        return deal_id
