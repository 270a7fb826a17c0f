"""Build Vyte v2 Event objects in the shape that the live API returns.

The shape follows the response samples on Vyte's events reference
(developer.vyte.in/reference/events): every ``_id`` is a Mongo ObjectId string,
timestamps are UTC with milliseconds and a ``Z`` suffix
(``2020-07-16T07:00:00.000Z``), and the event and its sub-documents carry
Mongoose ``createdAt``/``updatedAt`` fields. The emulator in
``bookingsync.sandbox.vyte`` stores and serves these objects.
"""

from __future__ import annotations

import itertools
import re
import secrets
import string
import threading
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

JsonObject = dict[str, Any]

OBJECT_ID_PATTERN = re.compile(r"[0-9a-f]{24}")

INVITEE_KEYS = frozenset({"full_name", "email", "phone", "company"})

# ObjectId layout: 4-byte Unix time, 5 random bytes fixed per process,
# 3-byte counter that starts at a random value.
_PROCESS_RANDOM = secrets.token_bytes(5)
_object_id_counter = itertools.count(secrets.randbelow(1 << 24))
_object_id_lock = threading.Lock()

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


def new_object_id(*, at: datetime | None = None) -> str:
    """Return a new 24-hex-digit ObjectId whose first 8 digits encode ``at``.

    ``at`` defaults to the current time and must be timezone-aware.
    """
    moment = datetime.now(UTC) if at is None else _require_aware(at, "at")
    seconds = int(moment.timestamp()) & 0xFFFFFFFF
    with _object_id_lock:
        count = next(_object_id_counter) & 0xFFFFFF
    raw = seconds.to_bytes(4, "big") + _PROCESS_RANDOM + count.to_bytes(3, "big")
    return raw.hex()


def is_object_id(text: str) -> bool:
    """Return whether ``text`` is 24 lowercase hex digits, like Vyte's ids."""
    return OBJECT_ID_PATTERN.fullmatch(text) is not None


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as Vyte does: UTC, milliseconds, ``Z``."""
    utc = _require_aware(moment, "moment").astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse a timestamp written by ``format_timestamp`` (or any aware ISO 8601)."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return parsed.astimezone(UTC)


def parse_local_datetime(text: str, zone: ZoneInfo) -> datetime:
    """Parse an ISO 8601 input date and return it in UTC.

    A time with an offset keeps it. A naive time is wall-clock time in
    ``zone``, as Vyte reads ``2020-07-16T09:00:00`` for a Europe/Paris event
    as 07:00Z. Raises ``ValueError`` for invalid text and, as a strict choice
    the docs do not cover, for a naive time skipped by a DST change.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"invalid ISO 8601 date {text!r}") from error
    if parsed.tzinfo is not None:
        return parsed.astimezone(UTC)

    localized = parsed.replace(tzinfo=zone)
    round_trip = localized.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != parsed:
        raise ValueError(f"local time {text!r} does not exist in {zone.key}")
    return localized.astimezone(UTC)


def load_zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name``; raises ``ValueError`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {name!r}") from error


def new_date_entry(
    start: datetime,
    end: datetime,
    *,
    all_day: bool,
    author_id: str,
    now: datetime,
) -> JsonObject:
    """Build one ``dates[]`` entry, a proposed slot with the author's yes vote.

    ``confirmed`` stays false even on the confirmed slot, as in Vyte's
    samples, because ``confirmed.date_id`` on the event marks the chosen slot.
    """
    start = _require_aware(start, "start")
    end = _require_aware(end, "end")
    if end < start:
        raise ValueError(f"slot ends ({end.isoformat()}) before it starts")
    stamp = format_timestamp(now)
    return {
        "created_by": {"user": author_id},
        "votes": {"yes": [_new_vote(author_id, now)], "no": []},
        "all_day": all_day,
        "confirmed": False,
        "confirmed_invitees": [],
        "_id": new_object_id(at=now),
        "date": format_timestamp(start),
        "end_date": format_timestamp(end),
        "updatedAt": stamp,
        "createdAt": stamp,
    }


def new_place_entry(
    name: str, address: str | None, *, author_id: str, now: datetime
) -> JsonObject:
    """Build one ``places[]`` entry, leaving out ``address`` when it is None."""
    stamp = format_timestamp(now)
    place: JsonObject = {
        "created_by": {"user": author_id},
        "votes": {"yes": [_new_vote(author_id, now)], "no": []},
        "source": "app",
        "_id": new_object_id(at=now),
        "name": name,
    }
    if address is not None:
        place["address"] = address
    place["updatedAt"] = stamp
    place["createdAt"] = stamp
    return place


def new_invitee_entry(
    *,
    email: str,
    full_name: str | None,
    user_id: str | None,
    author_id: str,
    now: datetime,
    timezone: str,
    organizer: bool = False,
    voted: bool = True,
    phone: str | None = None,
    company: str | None = None,
) -> JsonObject:
    """Build one ``invitees[]`` entry. ``organizer=True`` sets ``su`` as on the host.

    ``phone`` and ``company`` are left out when None. ``company`` is not in
    Vyte's reference, but the daemon reads the booker's company from it.
    """
    invitee: JsonObject = {
        "created_by": {"user": author_id},
        "stats": {"voted": {"dates": voted, "places": voted}},
        "star": False,
        "_id": new_object_id(at=now),
        "email": email,
    }
    if user_id is not None:
        invitee["user"] = user_id
    invitee["su"] = organizer
    if full_name is not None:
        invitee["full_name"] = full_name
    invitee["picture_url"] = ""
    invitee["timezone"] = timezone
    invitee["locale"] = "en"
    if phone is not None:
        invitee["phone"] = phone
    if company is not None:
        invitee["company"] = company
    return invitee


def new_message_entry(
    *, sender_email: str, sender_user_id: str, body: str, now: datetime
) -> JsonObject:
    """Build one ``messages[]`` entry, such as the booker's note."""
    stamp = format_timestamp(now)
    return {
        "from": sender_email,
        "createdAt": stamp,
        "updatedAt": stamp,
        "body": body,
        "_id": new_object_id(at=now),
        "created_by": {"user": sender_user_id},
    }


def build_event(
    *,
    host_email: str,
    host_name: str,
    host_user_id: str | None,
    title: str,
    slots: list[tuple[datetime, datetime]],
    invitees: list[dict[str, str]],
    timezone: str = "Europe/Paris",
    place_name: str | None = None,
    place_address: str | None = None,
    message: str | None = None,
    message_from: str | None = None,
    confirmed_slot: int | None = 0,
    vyteme: bool = True,
    all_day: bool = False,
    host_as_invitee: bool = True,
    event_id: str | None = None,
    now: datetime | None = None,
) -> JsonObject:
    """Build a complete Vyte Event object as ``GET /v2/events/:id`` returns it.

    ``slots`` are the proposed (start, end) pairs, timezone-aware.
    ``confirmed_slot`` indexes ``slots`` and ``None`` leaves the event
    unconfirmed. ``invitees`` are the bookers, each with ``full_name`` and
    ``email`` and optionally ``phone`` and ``company``. Every guest gets a
    fresh ``user`` id because Vyte binds new invitee emails to user ids, as
    the add-invitees sample shows. With ``host_user_id=None`` the host has no
    ``user`` key, like the ``created_by`` of the reference's event sample.
    Raises ``ValueError`` for inconsistent arguments.
    """
    load_zone(timezone)
    _check_event_arguments(slots, invitees, confirmed_slot, place_name, place_address)
    if event_id is not None and not is_object_id(event_id):
        raise ValueError(f"event_id {event_id!r} is not 24 lowercase hex digits")
    now = datetime.now(UTC) if now is None else _require_aware(now, "now")

    # Sub-documents always name an author, even when the host has no user id.
    author_id = host_user_id or new_object_id(at=now)
    people = [
        _guest_entry(
            guest,
            author_id=author_id,
            timezone=timezone,
            voted=confirmed_slot is not None,
            now=now,
        )
        for guest in invitees
    ]
    if host_as_invitee:
        host = new_invitee_entry(
            email=host_email,
            full_name=host_name,
            user_id=host_user_id,
            author_id=author_id,
            now=now,
            timezone=timezone,
            organizer=True,
        )
        people.insert(0, host)

    dates = [
        new_date_entry(start, end, all_day=all_day, author_id=author_id, now=now)
        for start, end in slots
    ]
    places = []
    if place_name is not None:
        place = new_place_entry(place_name, place_address, author_id=author_id, now=now)
        places.append(place)
    messages = []
    if message is not None:
        sender = message_from or (invitees[0]["email"] if invitees else host_email)
        messages.append(_message_from(people, sender, message, now))

    confirmed = _confirmed_block(dates, places, confirmed_slot, now)
    return _assemble_event(
        event_id=event_id or new_object_id(at=now),
        created_by=_created_by(host_email, host_name, host_user_id),
        title=title,
        timezone=timezone,
        vyteme=vyteme,
        confirmed=confirmed,
        dates=dates,
        places=places,
        invitees=people,
        messages=messages,
        author_id=author_id,
        now=now,
    )


def reply_to_address(title: str) -> str:
    """Return a per-event reply-to address like Vyte's ``email`` field."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40].strip("-")
    suffix = "".join(secrets.choice(string.ascii_lowercase) for _ in range(9))
    return f"reply-to-participants-to-{slug or 'event'}-{suffix}@vyte.in"


def _require_aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment


def _new_vote(author_id: str, now: datetime) -> JsonObject:
    return {"created_by": {"user": author_id}, "_id": new_object_id(at=now)}


def _check_event_arguments(
    slots: list[tuple[datetime, datetime]],
    invitees: list[dict[str, str]],
    confirmed_slot: int | None,
    place_name: str | None,
    place_address: str | None,
) -> None:
    if confirmed_slot is not None and not 0 <= confirmed_slot < len(slots):
        raise ValueError(
            f"confirmed_slot {confirmed_slot} is out of range for {len(slots)} slots"
        )
    # Strict: Vyte requires a place name, so an address alone is rejected.
    if place_address is not None and place_name is None:
        raise ValueError("place_address requires place_name, so pass both")
    for index, invitee in enumerate(invitees):
        unknown = set(invitee) - INVITEE_KEYS
        if unknown:
            raise ValueError(f"invitees[{index}] has unknown keys {sorted(unknown)}")
        missing = {"full_name", "email"} - set(invitee)
        if missing:
            raise ValueError(f"invitees[{index}] is missing {sorted(missing)}")


def _guest_entry(
    guest: dict[str, str], *, author_id: str, timezone: str, voted: bool, now: datetime
) -> JsonObject:
    return new_invitee_entry(
        email=guest["email"],
        full_name=guest["full_name"],
        user_id=new_object_id(at=now),
        author_id=author_id,
        now=now,
        timezone=timezone,
        voted=voted,
        phone=guest.get("phone"),
        company=guest.get("company"),
    )


def _message_from(
    people: list[JsonObject], sender: str, body: str, now: datetime
) -> JsonObject:
    # A sender outside the invitee list still gets a user id, as Vyte binds
    # every message to a user.
    sender_id = next(
        (p["user"] for p in people if p["email"] == sender and "user" in p),
        new_object_id(at=now),
    )
    return new_message_entry(
        sender_email=sender, sender_user_id=sender_id, body=body, now=now
    )


def _created_by(
    host_email: str, host_name: str, host_user_id: str | None
) -> JsonObject:
    created_by: JsonObject = {"email": host_email}
    if host_user_id is not None:
        created_by["user"] = host_user_id
    created_by["picture_url"] = ""
    created_by["full_name"] = host_name
    return created_by


def _confirmed_block(
    dates: list[JsonObject],
    places: list[JsonObject],
    confirmed_slot: int | None,
    now: datetime,
) -> JsonObject:
    if confirmed_slot is None:
        return {"flag": False, "updated_at": None, "multi": False}
    confirmed: JsonObject = {
        "flag": True,
        "updated_at": format_timestamp(now),
        "date_id": dates[confirmed_slot]["_id"],
    }
    # NOTE: Vyte's samples always have a place. Without one, place_id is left
    # out, because the docs do not say whether it would be null or absent.
    if places:
        confirmed["place_id"] = places[0]["_id"]
    confirmed["multi"] = False
    return confirmed


def _assemble_event(
    *,
    event_id: str,
    created_by: JsonObject,
    title: str,
    timezone: str,
    vyteme: bool,
    confirmed: JsonObject,
    dates: list[JsonObject],
    places: list[JsonObject],
    invitees: list[JsonObject],
    messages: list[JsonObject],
    author_id: str,
    now: datetime,
) -> JsonObject:
    stamp = format_timestamp(now)
    key_store = {
        "_id": new_object_id(at=now),
        "hash": {
            author_id: "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(16))
        },
        "updatedAt": stamp,
        "createdAt": stamp,
        "__v": 0,
    }
    return {
        "created_by": created_by,
        "confirmed": confirmed,
        "third_party": {"group_ids": []},
        "ics_sequence": 0,
        "version": 0,
        "group_pro": False,
        "identification_alternatives": [],
        "_id": event_id,
        "title": title,
        "timezone": timezone,
        "vyteme": vyteme,
        "dates": dates,
        "places": places,
        # True only for events created through POST /v2/events.
        "api": False,
        "invitees": invitees,
        "messages": messages,
        "declines": [],
        "lang": "en",
        "locale": "en",
        "updatedAt": stamp,
        "createdAt": stamp,
        "invitees_length": len(invitees),
        "email": reply_to_address(title),
        "key_store": key_store,
        "links": None,
        "__v": 0,
    }
