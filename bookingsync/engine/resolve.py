"""Find or create the organization, persons and deal a booking refers to.

The local mapping is checked first and costs nothing; Pipedrive's search, which
costs four times a create in the daily token budget, runs only for items the
mapping does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from loguru import logger

from bookingsync.engine.creates import TrackedCreator, rfc3339
from bookingsync.engine.mapping import (
    RemoteIds,
    deal_title,
    organization_name,
    person_name,
)
from bookingsync.engine.store import Store
from bookingsync.errors import NotFound
from bookingsync.models.booking import Booking, Invitee
from bookingsync.models.state import BookingState
from bookingsync.settings import Settings
from bookingsync.sinks.pipedrive import PipedriveClient


class Origin(StrEnum):
    """The source of a resolved id."""

    MAPPING = "mapping"  # The local mapping knew it.
    FOUND = "found"  # Pipedrive had it, the mapping did not.
    CREATED = "created"  # Created by this pass.


@dataclass(frozen=True)
class Resolution:
    ids: RemoteIds
    booker_origin: Origin
    deal_origin: Origin | None

    @property
    def may_have_activity(self) -> bool:
        """Tell whether Pipedrive may hold an activity the mapping lost.

        True when the booker or the deal existed in Pipedrive without being in
        the local mapping, as after the state database was lost.
        """
        return Origin.FOUND in (self.booker_origin, self.deal_origin)


class Resolver:
    def __init__(
        self,
        settings: Settings,
        client: PipedriveClient,
        store: Store,
        creator: TrackedCreator,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.creator = creator
        self._users: dict[str, int] | None = None
        self._org_created = False
        # Deals seen open during the current run, so each is read only once.
        self._open_deals: set[int] = set()

    def start_run(self) -> None:
        """Forget what was learned about deals in earlier runs."""
        self._open_deals.clear()

    def resolve(
        self,
        booking: Booking,
        organization: str | None,
        state: BookingState | None,
        trust_snapshot: bool = True,
    ) -> Resolution:
        """Return the ids the booking's activity refers to.

        With ``trust_snapshot`` false, every id is looked up again even when
        the snapshot's people are unchanged (after Pipedrive rejected them).
        """
        owner_id = self.owner_for(booking.host_email)
        unchanged = (
            self._unchanged_references(booking, organization, state)
            if trust_snapshot
            else None
        )
        if unchanged is not None:
            return Resolution(
                RemoteIds(
                    unchanged.person_ids, unchanged.org_id, unchanged.deal_id, owner_id
                ),
                Origin.MAPPING,
                Origin.MAPPING if unchanged.deal_id is not None else None,
            )
        self._org_created = False
        org_id = self.organization(booking, organization, owner_id)
        person_ids: list[int] = []
        booker_origin = Origin.MAPPING
        limit = self.settings.max_persons_per_booking
        for index, invitee in enumerate(booking.invitees[:limit]):
            same_company = index == 0 or (
                organization_name(invitee, self.settings) == organization
            )
            person_id, origin = self.person(
                booking, invitee, org_id if same_company else None, owner_id
            )
            person_ids.append(person_id)
            if index == 0:
                booker_origin = origin
        self.store.update_booking(booking.key, person_ids=person_ids, org_id=org_id)

        # A new organization, or a new person without one, has no deal yet.
        owner_is_new = (
            self._org_created if org_id is not None else booker_origin is Origin.CREATED
        )
        deal_id, deal_origin = self.deal(
            booking, organization, org_id, person_ids[0], owner_id, state, owner_is_new
        )
        ids = RemoteIds(tuple(person_ids), org_id, deal_id, owner_id)
        return Resolution(ids, booker_origin, deal_origin)

    def _unchanged_references(
        self, booking: Booking, organization: str | None, state: BookingState | None
    ) -> RemoteIds | None:
        """Return the snapshot's ids when the booking's people are the same.

        A reschedule or an edit of the title keeps the invitees and the
        organization, so the ids recorded with the snapshot still apply and
        no lookup is needed.
        """
        content = state.synced() if state is not None else None
        if state is None or content is None or not state.synced_fingerprint:
            return None
        old = Booking.from_content(content)
        limit = self.settings.max_persons_per_booking
        same_people = [i.email for i in old.invitees[:limit]] == [
            i.email for i in booking.invitees[:limit]
        ]
        same_org = organization_name(old.booker, self.settings) == organization
        persons = tuple(state.persons())
        if not (same_people and same_org) or len(persons) != min(
            limit, len(booking.invitees)
        ):
            return None
        if self.settings.create_deals and state.deal_id is None:
            return None
        deal_id = state.deal_id if self.settings.create_deals else None
        return RemoteIds(persons, state.org_id, deal_id, None)

    def forget_references(self, booking: Booking, state: BookingState | None) -> None:
        """Drop the mapped persons and deal of a booking, to look them up again."""
        for invitee in booking.invitees:
            self.store.forget_person(invitee.email)
        if state is not None and state.deal_id is not None:
            self.store.forget_deal_id(state.deal_id)
            self.store.update_booking(booking.key, deal_id=None)

    # Owner -----------------------------------------------------------------

    def owner_for(self, host_email: str | None) -> int | None:
        """Return the Pipedrive user whose email is the host's, if any."""
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

    # Organization ----------------------------------------------------------

    def organization(
        self, booking: Booking, name: str | None, owner_id: int | None
    ) -> int | None:
        if name is None or not self.settings.create_organizations:
            return None
        known = self.store.organization_id(name)
        if known is not None:
            return known
        found = self._search_organization(name)
        if found is not None:
            self.store.remember_organization(name, found)
            return found

        body: dict[str, Any] = {"name": name}
        if owner_id is not None:
            body["owner_id"] = owner_id
        org_id, existed = self.creator.create(
            booking.key,
            "organizations",
            name.casefold(),
            body,
            find=lambda since: self._recent_organization(name, since),
            remember=lambda item_id: self.store.remember_organization(name, item_id),
        )
        self._org_created = not existed
        if not existed:
            logger.info(
                "Created organization {org_id} {name!r} for booking {booking}",
                org_id=org_id,
                name=name,
                booking=booking.key,
            )
        return org_id

    def _search_organization(self, name: str) -> int | None:
        matches = [
            int(item["id"])
            for item in self.client.search("organizations", name, "name")
            if str(item.get("name", "")).strip().casefold() == name.casefold()
        ]
        return min(matches) if matches else None

    def _recent_organization(self, name: str, since: datetime) -> int | None:
        matches = [
            int(item["id"])
            for item in self.client.list_all(
                "/api/v2/organizations", updated_since=rfc3339(since)
            )
            if str(item.get("name", "")).strip().casefold() == name.casefold()
        ]
        return min(matches) if matches else None

    # Persons ---------------------------------------------------------------

    def person(
        self,
        booking: Booking,
        invitee: Invitee,
        org_id: int | None,
        owner_id: int | None,
    ) -> tuple[int, Origin]:
        known = self.store.person_id(invitee.email)
        if known is not None:
            return known, Origin.MAPPING
        found = self._search_person(invitee.email)
        if found is not None:
            self.store.remember_person(invitee.email, found)
            return found, Origin.FOUND

        person_id, existed = self.creator.create(
            booking.key,
            "persons",
            invitee.email,
            self._person_body(invitee, org_id, owner_id),
            find=lambda since: self._recent_person(invitee.email, since),
            remember=lambda item_id: self.store.remember_person(invitee.email, item_id),
        )
        if not existed:
            logger.info(
                "Created person {person_id} for booking {booking}",
                person_id=person_id,
                booking=booking.key,
            )
        return person_id, Origin.CREATED

    def _search_person(self, email: str) -> int | None:
        """Search by email; only an exactly equal address is a match."""
        matches = [
            int(item["id"])
            for item in self.client.search("persons", email, "email")
            if _has_email(item.get("emails"), email)
        ]
        return min(matches) if matches else None

    def _recent_person(self, email: str, since: datetime) -> int | None:
        matches = [
            int(item["id"])
            for item in self.client.list_all(
                "/api/v2/persons", updated_since=rfc3339(since)
            )
            if _has_email(item.get("emails"), email)
        ]
        return min(matches) if matches else None

    @staticmethod
    def _person_body(
        invitee: Invitee, org_id: int | None, owner_id: int | None
    ) -> dict[str, Any]:
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
        return body

    # Deal ------------------------------------------------------------------

    def deal(
        self,
        booking: Booking,
        organization: str | None,
        org_id: int | None,
        person_id: int,
        owner_id: int | None,
        state: BookingState | None,
        owner_is_new: bool = False,
    ) -> tuple[int | None, Origin | None]:
        if not self.settings.create_deals:
            return None, None
        if state and state.deal_id is not None and state.synced_fingerprint:
            return state.deal_id, Origin.MAPPING
        owner_key = f"org:{org_id}" if org_id is not None else f"person:{person_id}"
        deal_id = self.store.deal_id(owner_key)
        if deal_id is not None and (
            deal_id in self._open_deals or self.deal_is_open(deal_id)
        ):
            self._open_deals.add(deal_id)
            self.store.update_booking(booking.key, deal_id=deal_id)
            return deal_id, Origin.MAPPING
        found = None if owner_is_new else self.find_open_deal(org_id, person_id)
        origin = Origin.FOUND
        if found is None:
            found, existed = self.creator.create(
                booking.key,
                "deals",
                owner_key,
                self._deal_body(booking, organization, org_id, person_id, owner_id),
                find=lambda _since: self.find_open_deal(org_id, person_id),
                remember=lambda item_id: self.store.remember_deal(owner_key, item_id),
            )
            origin = Origin.FOUND if existed else Origin.CREATED
            if not existed:
                logger.info(
                    "Created deal {deal_id} for booking {booking}",
                    deal_id=found,
                    booking=booking.key,
                )
        self.store.remember_deal(owner_key, found)
        self.store.update_booking(booking.key, deal_id=found)
        self._open_deals.add(found)
        return found, origin

    def deal_is_open(self, deal_id: int) -> bool:
        try:
            deal = self.client.get(f"/api/v2/deals/{deal_id}")
        except NotFound:
            return False
        return (
            bool(deal) and deal.get("status") == "open" and not deal.get("is_deleted")
        )

    def find_open_deal(self, org_id: int | None, person_id: int) -> int | None:
        """Return the oldest open deal of the organization, else of the person."""
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

    def _deal_body(
        self,
        booking: Booking,
        organization: str | None,
        org_id: int | None,
        person_id: int,
        owner_id: int | None,
    ) -> dict[str, Any]:
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
        return body


def _has_email(values: Any, email: str) -> bool:
    """Tell whether a person's emails (strings or objects) include ``email``."""
    for value in values or []:
        text = value.get("value") if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip().lower() == email:
            return True
    return False
