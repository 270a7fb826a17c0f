"""Emulator of the Pipedrive REST API for tests and the demo.

``PipedriveEmulator`` keeps persons, organizations, deals and activities in
memory in the API v2 response shape. It serves the v2 endpoints the daemon
uses, plus the v1 endpoints that have no v2 equivalent: users, activity types
and person merge. Serve it with ``EmulatorServer(PipedriveEmulator())``.

Where Pipedrive's documentation is silent, the emulator takes the stricter
reading, so a client that works here does not rely on lenient behaviour. Each
such place carries a "Strict choice" comment. The emulator also models the
daily token budget, the per-token burst window and a search index that lags
behind writes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bookingsync.sandbox.server import Request, Response

logger = logging.getLogger(__name__)

Entity = dict[str, Any]
Validator = Callable[[str, Any], Any]

ERROR_INFO = "Please check developers.pipedrive.com"
ENTITY_KINDS = ("persons", "organizations", "deals", "activities")
ENTITY_LABELS = {
    "persons": "Person",
    "organizations": "Organization",
    "deals": "Deal",
    "activities": "Activity",
}
BURST_WINDOW_SECONDS = 2.0
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 500
MAX_FILTER_IDS = 100
MAX_CUSTOM_FIELD_KEYS = 15

# Every request acts as the seeded admin user, the owner of the API token.
TOKEN_USER_ID = 1
COMPANY_DOMAIN = "sandbox"

# Defaults for values that a create request leaves out. Pipedrive takes these
# from account settings, so they are stand-ins rather than documented values.
DEFAULT_PIPELINE_ID = 1
DEFAULT_VISIBLE_TO = 3
DEFAULT_CURRENCY = "USD"
DEFAULT_ACTIVITY_TYPE = "task"

# Token cost of each request against the daily budget. The v2 costs are the
# `x-token-cost` values reported for a mid-2025 copy of Pipedrive's v2 OpenAPI
# spec, not checked against a live account. The v1 costs are guesses, because
# no per-endpoint v1 table is published. v1 is reported to cost about twice v2.
COST_GET_ONE = 1
COST_LIST = 10
COST_CREATE = 5
COST_UPDATE = 5
COST_DELETE = 3
COST_SEARCH = 20
COST_PIPELINE_LIST = 5
COST_V1_USERS = 10
COST_V1_ME = 1
COST_V1_ACTIVITY_TYPES = 10
COST_V1_MERGE = 10

UNAUTHORIZED_BODY: Entity = {
    "success": False,
    "error": "unauthorized access",
    "errorCode": 401,
    "error_info": ERROR_INFO,
}
RATE_LIMITED_BODY: Entity = {
    "success": False,
    "error": "Request over limit",
    "error_info": ERROR_INFO,
    "data": None,
    "additional_data": None,
}
ACTIVITY_PERSON_ID_MESSAGE = (
    "person_id is read-only on activities. Add the person to participants with "
    '"primary": true instead.'
)


class PipedriveApiError(ValueError):
    """A request that the emulated API rejects, with the HTTP status to return.

    ``code`` is the v2 error code, such as ``ERR_BAD_REQUEST``. The ``ui_*``
    helpers raise it too, so tests get the same validation as API clients.
    """

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _bad_request(message: str) -> PipedriveApiError:
    return PipedriveApiError(400, message, "ERR_BAD_REQUEST")


def _not_found(message: str) -> PipedriveApiError:
    return PipedriveApiError(404, message, "ERR_NOT_FOUND")


# --- Body validators --------------------------------------------------------
#
# A validator takes the field name (for messages) and the decoded JSON value,
# and returns the value to store or raises a 400 error. v2 is strict about
# types: booleans must be JSON booleans and numbers must not be strings.


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expect(valid: bool, key: str, expected: str, value: Any) -> None:
    if not valid:
        excerpt = json.dumps(value)[:60]
        raise _bad_request(
            f"Invalid {key}: expected {expected}, got {_json_type(value)} {excerpt}"
        )


def _integer(key: str, value: Any) -> int:
    valid = isinstance(value, int) and not isinstance(value, bool)
    _expect(valid, key, "an integer", value)
    return int(value)


def _number(key: str, value: Any) -> int | float:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    _expect(valid, key, "a number", value)
    return int(value) if isinstance(value, int) else float(value)


def _boolean(key: str, value: Any) -> bool:
    _expect(isinstance(value, bool), key, "a boolean (true or false)", value)
    return bool(value)


def _text(key: str, value: Any) -> str:
    _expect(isinstance(value, str), key, "a string", value)
    return str(value)


def _required_text(key: str, value: Any) -> str:
    valid = isinstance(value, str) and value.strip() != ""
    _expect(valid, key, "a non-empty string", value)
    return str(value)


def _nullable(validator: Validator) -> Validator:
    def check(key: str, value: Any) -> Any:
        return None if value is None else validator(key, value)

    return check


def _one_of(*choices: Any) -> Validator:
    def check(key: str, value: Any) -> Any:
        # Compare types too, because True == 1 in Python but not in JSON.
        valid = any(type(value) is type(c) and value == c for c in choices)
        _expect(valid, key, "one of " + ", ".join(map(str, choices)), value)
        return value

    return check


def _integer_in_range(low: int, high: int) -> Validator:
    def check(key: str, value: Any) -> int:
        number = _integer(key, value)
        _expect(low <= number <= high, key, f"an integer {low}-{high}", value)
        return number

    return check


def _integer_list(key: str, value: Any) -> list[int]:
    _expect(isinstance(value, list), key, "an array of integers", value)
    return [_integer(f"{key}[{i}]", item) for i, item in enumerate(value)]


DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
CLOCK_TIME_PATTERN = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?")
RFC3339_PATTERN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _date(key: str, value: Any) -> str:
    valid = isinstance(value, str) and DATE_PATTERN.fullmatch(value) is not None
    _expect(valid, key, "a date YYYY-MM-DD", value)
    try:
        date.fromisoformat(value)
    except ValueError:
        raise _bad_request(f"Invalid {key}: {value!r} is not a calendar date") from None
    return str(value)


def _clock_time(key: str, value: Any) -> str:
    """Validate ``HH:MM`` or ``HH:MM:SS`` and return it as ``HH:MM:SS``."""
    match = CLOCK_TIME_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        _expect(False, key, "a time HH:MM or HH:MM:SS", value)
        return ""  # not reached: _expect raised
    hours, minutes, seconds = match.group(1), match.group(2), match.group(3) or "00"
    return f"{hours}:{minutes}:{seconds}"


def _format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_timestamp(key: str, value: Any) -> datetime:
    valid = isinstance(value, str) and RFC3339_PATTERN.fullmatch(value) is not None
    _expect(valid, key, "an RFC 3339 timestamp like 2025-01-31T09:30:00Z", value)
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _bad_request(f"Invalid {key}: {value!r} is not a real time") from None


def _timestamp(key: str, value: Any) -> str:
    return _format_timestamp(_parse_timestamp(key, value))


def _currency(key: str, value: Any) -> str:
    valid = isinstance(value, str) and re.fullmatch("[A-Z]{3}", value) is not None
    _expect(valid, key, "a 3-letter currency code such as EUR", value)
    return str(value)


def _custom_fields(key: str, value: Any) -> Entity:
    # NOTE: field codes are not checked, because the emulator has no
    # personFields/dealFields endpoints to define them.
    _expect(isinstance(value, dict), key, "an object keyed by field code", value)
    return dict(value)


def _validate_object(
    name: str, value: Any, spec: dict[str, Validator], required: Iterable[str] = ()
) -> Entity:
    """Validate a nested JSON object and return only the keys it contains."""
    _expect(isinstance(value, dict), name, "an object", value)
    for key in value:
        if key not in spec:
            allowed = ", ".join(spec)
            raise _bad_request(f"Unknown field {name}.{key}; allowed: {allowed}")
    for key in required:
        if key not in value:
            raise _bad_request(f"Missing required field {name}.{key}")
    return {key: spec[key](f"{name}.{key}", item) for key, item in value.items()}


def _array(key: str, value: Any) -> list[Any]:
    _expect(isinstance(value, list), key, "an array", value)
    return list(value)


ADDRESS_PARTS = (
    "value",
    "country",
    "admin_area_level_1",
    "admin_area_level_2",
    "locality",
    "sublocality",
    "route",
    "street_number",
    "subpremise",
    "postal_code",
)
ADDRESS_SPEC: dict[str, Validator] = {part: _nullable(_text) for part in ADDRESS_PARTS}


def _address(key: str, value: Any) -> Entity:
    """Validate an address object (activity location, organization address)."""
    expected = 'an object such as {"value": "12 Example Street"}'
    _expect(isinstance(value, dict), key, expected, value)
    parts = _validate_object(key, value, ADDRESS_SPEC)
    return {part: parts.get(part) for part in ADDRESS_PARTS}


CONTACT_SPEC: dict[str, Validator] = {
    "value": _required_text,
    "primary": _boolean,
    "label": _text,
}


def _contacts(key: str, value: Any) -> list[Entity]:
    """Validate a person's emails or phones.

    The label defaults to "work", and the first entry becomes primary when
    none is.
    """
    entries = []
    for index, raw in enumerate(_array(key, value)):
        entry_fields = _validate_object(
            f"{key}[{index}]", raw, CONTACT_SPEC, ("value",)
        )
        entries.append(
            {
                "value": entry_fields["value"],
                "primary": entry_fields.get("primary", False),
                "label": entry_fields.get("label", "work"),
            }
        )
    _settle_primary(key, entries)
    return entries


def _settle_primary(key: str, entries: list[Entity]) -> None:
    """Make the first entry primary when none is; reject several primaries."""
    primaries = sum(1 for entry in entries if entry["primary"])
    if primaries > 1:
        # Strict choice: the documentation does not say which one would win.
        raise _bad_request(f"Invalid {key}: only one entry may be primary")
    if entries and primaries == 0:
        entries[0]["primary"] = True


PARTICIPANT_SPEC: dict[str, Validator] = {"person_id": _integer, "primary": _boolean}


def _participants(key: str, value: Any) -> list[Entity]:
    entries = []
    for index, raw in enumerate(_array(key, value)):
        name = f"{key}[{index}]"
        entry_fields = _validate_object(name, raw, PARTICIPANT_SPEC, ("person_id",))
        entries.append(
            {
                "person_id": entry_fields["person_id"],
                "primary": entry_fields.get("primary", False),
            }
        )
    person_ids = [entry["person_id"] for entry in entries]
    if len(set(person_ids)) != len(person_ids):
        raise _bad_request(f"Invalid {key}: a person may appear only once")
    _settle_primary(key, entries)
    return entries


ATTENDEE_SPEC: dict[str, Validator] = {
    "email": _nullable(_text),
    "name": _nullable(_text),
    "status": _nullable(_text),
    "is_organizer": _boolean,
    "person_id": _nullable(_integer),
    "user_id": _nullable(_integer),
}


def _attendees(key: str, value: Any) -> list[Entity]:
    entries = []
    for index, raw in enumerate(_array(key, value)):
        name = f"{key}[{index}]"
        entry_fields = _validate_object(name, raw, ATTENDEE_SPEC)
        entry = {part: entry_fields.get(part) for part in ATTENDEE_SPEC}
        entry["is_organizer"] = entry_fields.get("is_organizer", False)
        identities = (entry["email"], entry["person_id"], entry["user_id"])
        if all(identity is None for identity in identities):
            raise _bad_request(f"Invalid {name}: give email, person_id or user_id")
        entries.append(entry)
    return entries


VISIBLE_TO = _one_of(1, 3, 5, 7)
TIMESTAMP_OR_NULL = _nullable(_timestamp)

PERSON_FIELDS: dict[str, Validator] = {
    "name": _required_text,
    "owner_id": _integer,
    "org_id": _nullable(_integer),
    "emails": _contacts,
    "phones": _contacts,
    "visible_to": VISIBLE_TO,
    "label_ids": _integer_list,
    "marketing_status": _one_of("no_consent", "unsubscribed", "subscribed", "archived"),
    "custom_fields": _custom_fields,
    "add_time": _timestamp,
    "update_time": _timestamp,
}
ORGANIZATION_FIELDS: dict[str, Validator] = {
    "name": _required_text,
    "owner_id": _integer,
    "visible_to": VISIBLE_TO,
    "label_ids": _integer_list,
    "address": _nullable(_address),
    "custom_fields": _custom_fields,
    "add_time": _timestamp,
    "update_time": _timestamp,
}
DEAL_FIELDS: dict[str, Validator] = {
    "title": _required_text,
    "owner_id": _integer,
    "person_id": _nullable(_integer),
    "org_id": _nullable(_integer),
    "pipeline_id": _integer,
    "stage_id": _integer,
    "value": _number,
    "currency": _currency,
    "status": _one_of("open", "won", "lost"),
    "probability": _nullable(_integer_in_range(0, 100)),
    "lost_reason": _nullable(_text),
    "visible_to": VISIBLE_TO,
    "close_time": TIMESTAMP_OR_NULL,
    "won_time": TIMESTAMP_OR_NULL,
    "lost_time": TIMESTAMP_OR_NULL,
    "expected_close_date": _nullable(_date),
    "label_ids": _integer_list,
    "is_archived": _boolean,
    "archive_time": TIMESTAMP_OR_NULL,
    "is_deleted": _boolean,
    "custom_fields": _custom_fields,
    "add_time": _timestamp,
    "update_time": _timestamp,
}
ACTIVITY_FIELDS: dict[str, Validator] = {
    "subject": _text,
    "type": _text,
    "owner_id": _integer,
    "deal_id": _nullable(_integer),
    "lead_id": _nullable(_text),
    "org_id": _nullable(_integer),
    "project_id": _nullable(_integer),
    "due_date": _nullable(_date),
    "due_time": _nullable(_clock_time),
    "duration": _nullable(_clock_time),
    "busy": _boolean,
    "done": _boolean,
    "location": _nullable(_address),
    "participants": _participants,
    "attendees": _attendees,
    "public_description": _nullable(_text),
    "note": _nullable(_text),
    "priority": _nullable(_integer),
}
FIELD_SPECS = {
    "persons": PERSON_FIELDS,
    "organizations": ORGANIZATION_FIELDS,
    "deals": DEAL_FIELDS,
    "activities": ACTIVITY_FIELDS,
}
REQUIRED_ON_CREATE = {"persons": "name", "organizations": "name", "deals": "title"}

# Body fields that name another record, and the store that must hold it.
# Strict choice: leads and projects are not emulated, so any non-null lead_id
# or project_id is rejected as unknown.
REFERENCE_KINDS = {
    "owner_id": "users",
    "org_id": "organizations",
    "person_id": "persons",
    "deal_id": "deals",
    "pipeline_id": "pipelines",
    "stage_id": "stages",
    "lead_id": "leads",
    "project_id": "projects",
}


# --- Record templates -------------------------------------------------------
#
# A new record starts from its template, with every key of the v2 response
# present and null when unset, and then receives the validated body fields.


def _new_person(item_id: int, now: str) -> Entity:
    return {
        "id": item_id,
        "name": "",
        "first_name": None,
        "last_name": None,
        "owner_id": TOKEN_USER_ID,
        "org_id": None,
        "add_time": now,
        "update_time": now,
        "emails": [],
        "phones": [],
        "is_deleted": False,
        "visible_to": DEFAULT_VISIBLE_TO,
        "label_ids": [],
        "picture_id": None,
        "custom_fields": {},
    }


def _new_organization(item_id: int, now: str) -> Entity:
    return {
        "id": item_id,
        "name": "",
        "owner_id": TOKEN_USER_ID,
        "add_time": now,
        "update_time": now,
        "address": None,
        "is_deleted": False,
        "visible_to": DEFAULT_VISIBLE_TO,
        "label_ids": [],
        "custom_fields": {},
    }


def _new_deal(item_id: int, now: str) -> Entity:
    deal: Entity = {
        "id": item_id,
        "title": "",
        "creator_user_id": TOKEN_USER_ID,
        "owner_id": TOKEN_USER_ID,
        "value": 0,
        "person_id": None,
        "org_id": None,
        "stage_id": None,
        "pipeline_id": None,
        "currency": DEFAULT_CURRENCY,
        "archive_time": None,
        "add_time": now,
        "update_time": now,
        "stage_change_time": None,
        "status": "open",
        "is_archived": False,
        "is_deleted": False,
        "probability": None,
        "lost_reason": None,
        "visible_to": DEFAULT_VISIBLE_TO,
    }
    empty_keys = (
        "close_time won_time lost_time local_won_date local_lost_date "
        "local_close_date expected_close_date"
    )
    deal.update(dict.fromkeys(empty_keys.split()))
    deal["label_ids"] = []
    deal.update(origin="API", origin_id=None, channel=None, channel_id=None)
    deal.update(acv=None, arr=None, mrr=None, custom_fields={})
    return deal


def _new_activity(item_id: int, now: str) -> Entity:
    activity: Entity = {
        "id": item_id,
        "subject": None,
        "type": DEFAULT_ACTIVITY_TYPE,
        "owner_id": TOKEN_USER_ID,
        "creator_user_id": TOKEN_USER_ID,
        "is_deleted": False,
        "add_time": now,
        "update_time": now,
    }
    empty_keys = (
        "deal_id lead_id person_id org_id project_id due_date due_time duration"
    )
    activity.update(dict.fromkeys(empty_keys.split()))
    activity.update(busy=False, done=False, marked_as_done_time=None, location=None)
    activity.update(participants=[], attendees=[])
    conference_keys = (
        "conference_meeting_client conference_meeting_url conference_meeting_id"
    )
    activity.update(dict.fromkeys(conference_keys.split()))
    activity.update(public_description=None, priority=None, note=None)
    return activity


TEMPLATES: dict[str, Callable[[int, str], Entity]] = {
    "persons": _new_person,
    "organizations": _new_organization,
    "deals": _new_deal,
    "activities": _new_activity,
}
READ_ONLY_FIELDS = {
    kind: frozenset(TEMPLATES[kind](0, "")) - frozenset(FIELD_SPECS[kind])
    for kind in ENTITY_KINDS
}


def _check_writable(kind: str, key: str) -> None:
    if kind == "activities" and key == "person_id":
        raise _bad_request(ACTIVITY_PERSON_ID_MESSAGE)
    if key in READ_ONLY_FIELDS[kind]:
        raise _bad_request(f"Field {key!r} is read-only on {kind}")
    if key not in FIELD_SPECS[kind]:
        # Strict choice: whether v2 ignores unknown keys is undocumented, and
        # rejecting them catches typos.
        allowed = ", ".join(sorted(FIELD_SPECS[kind]))
        raise _bad_request(f"Unknown field {key!r} for {kind}; allowed: {allowed}")


def _split_name(name: str) -> tuple[str, str | None]:
    """Split a person's name into first name (first word) and last name (rest)."""
    parts = name.split(maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else None


def _primary_person_id(participants: list[Entity]) -> int | None:
    for participant in participants:
        if participant["primary"]:
            return int(participant["person_id"])
    return None


def _read_json_object(request: Request) -> Entity:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        payload = json.loads(
            request.body.decode("utf-8"), parse_constant=reject_constant
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise _bad_request(f"Request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise _bad_request(
            f"Request body must be a JSON object, got {_json_type(payload)}"
        )
    return payload


# --- Query strings and pagination -------------------------------------------


class _Query:
    """Validated, typed access to the query string of one request.

    Strict choice: a parameter the endpoint does not support is rejected with
    400, including documented ones the emulator does not implement (such as
    ``filter_id``), so a client never silently gets unfiltered data.
    """

    def __init__(self, request: Request, allowed: Iterable[str]) -> None:
        names = set(allowed)
        self._values: dict[str, str] = {}
        for name, values in request.query.items():
            if name == "api_token":
                continue  # authentication, checked before routing
            if name not in names:
                accepted = ", ".join(sorted(names)) or "none"
                raise _bad_request(
                    f"Unsupported query parameter {name!r}; accepted here: {accepted}"
                )
            if len(values) != 1:
                raise _bad_request(f"Query parameter {name!r} must be given once")
            self._values[name] = values[0]

    def text(self, name: str) -> str | None:
        return self._values.get(name)

    def integer(self, name: str) -> int | None:
        value = self._values.get(name)
        if value is None:
            return None
        if not value.isascii() or not value.isdigit():
            raise _bad_request(f"Query parameter {name} must be an integer: {value!r}")
        return int(value)

    def boolean(self, name: str) -> bool | None:
        value = self._values.get(name)
        if value is None:
            return None
        if value not in ("true", "false"):
            raise _bad_request(
                f"Query parameter {name} must be true or false: {value!r}"
            )
        return value == "true"

    def choice(self, name: str, choices: Iterable[str]) -> str | None:
        value = self._values.get(name)
        allowed = tuple(choices)
        if value is not None and value not in allowed:
            options = ", ".join(allowed)
            raise _bad_request(f"Query parameter {name} must be one of {options}")
        return value

    def names(self, name: str, choices: Iterable[str] | None) -> list[str] | None:
        """Parse a comma-separated list, checking each entry against ``choices``."""
        value = self._values.get(name)
        if value is None:
            return None
        entries = [entry.strip() for entry in value.split(",")]
        allowed = None if choices is None else tuple(choices)
        for entry in entries:
            if entry == "" or (allowed is not None and entry not in allowed):
                options = (
                    "any non-empty names" if allowed is None else ", ".join(allowed)
                )
                raise _bad_request(
                    f"Invalid {name} entry {entry!r}; allowed: {options}"
                )
        return entries

    def id_list(self, name: str) -> set[int] | None:
        entries = self.names(name, None)
        if entries is None:
            return None
        if len(entries) > MAX_FILTER_IDS:
            raise _bad_request(
                f"Query parameter {name} accepts at most {MAX_FILTER_IDS} ids"
            )
        if not all(entry.isascii() and entry.isdigit() for entry in entries):
            raise _bad_request(
                f"Query parameter {name} must be comma-separated integers"
            )
        return {int(entry) for entry in entries}

    def timestamp(self, name: str) -> str | None:
        value = self._values.get(name)
        return None if value is None else _timestamp(f"query parameter {name}", value)

    def limit(self) -> int:
        limit = self.integer("limit")
        if limit is None:
            return DEFAULT_PAGE_LIMIT
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            # Strict choice: whether Pipedrive clamps or rejects is undocumented.
            raise _bad_request(
                f"limit must be between 1 and {MAX_PAGE_LIMIT}, got {limit}"
            )
        return limit


def _encode_cursor(payload: Entity) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> Entity:
    invalid = _bad_request(
        "Invalid cursor; pass the previous page's additional_data.next_cursor as is"
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if not isinstance(payload, dict):
        raise invalid
    return payload


SortKey = tuple[bool, Any, int]


def _sort_key(item: Entity, field: str) -> SortKey:
    """Order by ``field`` with nulls last, breaking ties by id."""
    value = item.get(field)
    return (value is None, "" if value is None else value, item["id"])


def _cursor_sort_key(query: _Query, sort_by: str, direction: str) -> SortKey | None:
    cursor = query.text("cursor")
    if cursor is None:
        return None
    payload = _decode_cursor(cursor)
    after = payload.get("after")
    mismatch = _bad_request("Invalid cursor for this sort_by and sort_direction")
    same_order = (
        payload.get("sort_by") == sort_by and payload.get("sort_direction") == direction
    )
    if not same_order or not isinstance(after, list) or len(after) != 3:
        raise mismatch
    value_type = int if sort_by == "id" else str
    is_null, value, item_id = after
    if not isinstance(is_null, bool) or not isinstance(value, value_type):
        raise mismatch
    if not isinstance(item_id, int):
        raise mismatch
    return (is_null, value, item_id)


def _page_by_key(
    items: list[Entity], query: _Query, sort_fields: Iterable[str]
) -> tuple[list[Entity], str | None]:
    """Sort ``items`` and cut one page after the cursor position.

    The cursor stores the sort key of the last item served, like Pipedrive's,
    so records created or deleted between pages do not shift later pages.
    """
    sort_by = query.choice("sort_by", sort_fields) or "id"
    direction = query.choice("sort_direction", ("asc", "desc")) or "asc"
    limit = query.limit()
    descending = direction == "desc"
    ordered = sorted(
        items, key=lambda item: _sort_key(item, sort_by), reverse=descending
    )

    after = _cursor_sort_key(query, sort_by, direction)
    if after is not None:
        if descending:
            ordered = [item for item in ordered if _sort_key(item, sort_by) < after]
        else:
            ordered = [item for item in ordered if _sort_key(item, sort_by) > after]

    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, None
    last_key = list(_sort_key(page[-1], sort_by))
    payload = {"sort_by": sort_by, "sort_direction": direction, "after": last_key}
    return page, _encode_cursor(payload)


def _page_by_offset(items: list[Any], query: _Query) -> tuple[list[Any], str | None]:
    limit = query.limit()
    offset = 0
    cursor = query.text("cursor")
    if cursor is not None:
        offset = _decode_cursor(cursor).get("offset", -1)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise _bad_request("Invalid cursor for a search result")
    end = offset + limit
    next_cursor = _encode_cursor({"offset": end}) if end < len(items) else None
    return items[offset:end], next_cursor


# --- Responses --------------------------------------------------------------


def _data_response(data: Any) -> Response:
    return Response.json(200, {"success": True, "data": data})


def _list_response(items: list[Entity], next_cursor: str | None) -> Response:
    payload = {
        "success": True,
        "data": items,
        "additional_data": {"next_cursor": next_cursor},
    }
    return Response.json(200, payload)


def _error_response(path: str, error: PipedriveApiError) -> Response:
    """Render an error in the v1 envelope on v1 paths, in the v2 one elsewhere."""
    body: Entity
    if path.startswith("/api/v1/"):
        body = {
            "success": False,
            "error": error.message,
            "error_info": ERROR_INFO,
            "data": None,
            "additional_data": None,
        }
    else:
        # The v2 body for errors other than 400 is not documented; this follows
        # the documented 400 body.
        body = {"success": False, "error": error.message, "code": error.code}
    return Response.json(error.status, body)


@dataclass(frozen=True)
class _View:
    """Optional parts of a record that a request asked to see."""

    include_attendees: bool = False
    custom_field_keys: frozenset[str] | None = None


def _view_for(query: _Query) -> _View:
    includes = query.names("include_fields", ("attendees",)) or []
    keys = query.names("custom_fields", None)
    if keys is not None and len(keys) > MAX_CUSTOM_FIELD_KEYS:
        raise _bad_request(
            f"custom_fields accepts at most {MAX_CUSTOM_FIELD_KEYS} keys, "
            f"got {len(keys)}"
        )
    return _View(
        include_attendees="attendees" in includes,
        custom_field_keys=None if keys is None else frozenset(keys),
    )


def _present(kind: str, item: Entity, view: _View) -> Entity:
    """Copy a stored record into the shape one response shows."""
    presented = copy.deepcopy(item)
    if kind == "activities" and not view.include_attendees:
        del presented["attendees"]
    if view.custom_field_keys is not None and "custom_fields" in presented:
        presented["custom_fields"] = {
            key: value
            for key, value in presented["custom_fields"].items()
            if key in view.custom_field_keys
        }
    return presented


# --- Rate limits ------------------------------------------------------------


SEARCH_BURST_LIMIT = 10


def _is_search(path: str) -> bool:
    return path.endswith("/search") or "/itemSearch" in path


class _BurstWindow:
    """Per-token request allowance in a rolling 2-second window."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._accepted: deque[float] = deque()

    def _expire(self) -> float:
        now = self._clock()
        while self._accepted and self._accepted[0] <= now - BURST_WINDOW_SECONDS:
            self._accepted.popleft()
        return now

    def has_room(self) -> bool:
        self._expire()
        return len(self._accepted) < self.limit

    def acquire(self) -> None:
        self._accepted.append(self._expire())

    def seconds_until_free(self) -> int:
        """Return whole seconds until the oldest counted request leaves the window."""
        now = self._expire()
        if not self._accepted:
            return math.ceil(BURST_WINDOW_SECONDS)
        return max(1, math.ceil(self._accepted[0] + BURST_WINDOW_SECONDS - now))

    def headers(self) -> dict[str, str]:
        self._expire()
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.limit - len(self._accepted)),
            "x-ratelimit-reset": str(self.seconds_until_free()),
        }


class _DailyBudget:
    """Company-wide daily token budget that refills at UTC midnight."""

    def __init__(self, limit: int, utc_now: Callable[[], datetime]) -> None:
        self.limit = limit
        self.spent = 0
        self._utc_now = utc_now
        self._day = utc_now().date()

    def remaining(self) -> int:
        today = self._utc_now().date()
        if today != self._day:
            self.reset()
        return max(0, self.limit - self.spent)

    def can_afford(self, cost: int) -> bool:
        return cost <= self.remaining()

    def charge(self, cost: int) -> None:
        self.remaining()  # starts a new day first when midnight has passed
        self.spent += cost

    def reset(self) -> None:
        self.spent = 0
        self._day = self._utc_now().date()

    def seconds_until_reset(self) -> int:
        now = self._utc_now().astimezone(UTC)
        midnight = (now + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return max(1, math.ceil((midnight - now).total_seconds()))

    def headers(self) -> dict[str, str]:
        return {
            "x-daily-ratelimit-token-limit": str(self.limit),
            "x-daily-ratelimit-token-remaining": str(self.remaining()),
        }


# --- Search -----------------------------------------------------------------

SEARCH_FIELDS = {
    "persons": ("custom_fields", "email", "notes", "phone", "name"),
    "organizations": ("address", "custom_fields", "notes", "name"),
    "deals": ("custom_fields", "notes", "title"),
}
SEARCH_PARAMS = {
    "persons": ("term", "fields", "exact_match", "organization_id", "limit", "cursor"),
    "organizations": ("term", "fields", "exact_match", "limit", "cursor"),
    "deals": (
        "term",
        "fields",
        "exact_match",
        "person_id",
        "organization_id",
        "status",
        "limit",
        "cursor",
    ),
}
ITEM_TYPES = (
    "deal",
    "person",
    "organization",
    "product",
    "lead",
    "file",
    "mail_attachment",
    "project",
)
ITEM_TYPE_KINDS = {
    "person": "persons",
    "organization": "organizations",
    "deal": "deals",
}
SEARCH_ITEM_TYPES = {kind: item_type for item_type, kind in ITEM_TYPE_KINDS.items()}
ITEM_SEARCH_FIELDS = (
    "address",
    "code",
    "custom_fields",
    "email",
    "name",
    "notes",
    "organization_name",
    "person_name",
    "phone",
    "title",
    "description",
)
ITEM_SEARCH_PARAMS = (
    "term",
    "item_types",
    "fields",
    "search_for_related_items",
    "exact_match",
    "limit",
    "cursor",
)
# The itemSearch fields that apply to each kind of record.
KIND_SEARCH_FIELDS = {
    "persons": frozenset(SEARCH_FIELDS["persons"]) | {"organization_name"},
    "organizations": frozenset(SEARCH_FIELDS["organizations"]),
    "deals": frozenset(SEARCH_FIELDS["deals"]) | {"person_name", "organization_name"},
}
SEARCH_KIND_ORDER = {"deals": 0, "persons": 1, "organizations": 2}


@dataclass(frozen=True)
class _SearchHit:
    """One matching record as the search index last saw it."""

    score: float
    kind: str
    item: Entity
    matched_custom_fields: list[str]


def _hit_order(hit: _SearchHit) -> tuple[float, int, int]:
    return (-hit.score, SEARCH_KIND_ORDER[hit.kind], hit.item["id"])


def _match_score(term: str, values: Iterable[str], exact: bool) -> float | None:
    """Score the best case-insensitive match of ``term`` among ``values``.

    An exact match scores 1; a substring match scores the share of the value
    that the term covers. Returns None when nothing matches.
    """
    needle = term.casefold()
    best: float | None = None
    for value in values:
        haystack = value.casefold()
        matched = haystack == needle if exact else needle in haystack
        if matched:
            score = round(len(needle) / max(len(haystack), 1), 4)
            best = score if best is None else max(best, score)
    return best


def _custom_field_strings(item: Entity) -> list[str]:
    """Return the searchable text of a record's custom field values."""
    strings = []
    for value in item.get("custom_fields", {}).values():
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            strings.append(str(value))
    return strings


def _search_term(query: _Query) -> tuple[str, bool]:
    exact = query.boolean("exact_match") or False
    term = query.text("term")
    if term is None:
        raise _bad_request("Missing required query parameter 'term'")
    minimum = 1 if exact else 2
    if len(term.strip()) < minimum:
        raise _bad_request(
            f"Search term must be at least {minimum} characters"
            + ("" if exact else " (or 1 with exact_match=true)")
        )
    return term, exact


# --- Seed data --------------------------------------------------------------

ACTIVITY_TYPE_SEED = (
    ("call", "Call"),
    ("meeting", "Meeting"),
    ("task", "Task"),
    ("deadline", "Deadline"),
    ("email", "Email"),
    ("lunch", "Lunch"),
)
STAGE_SEED = ((1, "Qualified"), (2, "Contact made"), (3, "Demo scheduled"))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _v1_time(moment: datetime) -> str:
    """Format a time the way v1 does: ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    cost: int
    handler: Callable[[Request, re.Match[str]], Response]


# --- The emulator -----------------------------------------------------------


class PipedriveEmulator:
    """In-memory Pipedrive company account served over the REST API.

    ``persons``, ``organizations``, ``deals`` and ``activities`` map ids to
    records in the v2 response shape, soft-deleted ones included. Stored
    activities also keep ``attendees``, which responses include only on request.
    Read them directly in tests, or use ``live()`` for a locked, copied view.

    ``burst_limit`` enables the per-token limit of requests per rolling 2 s
    window, and ``daily_token_budget`` the company's daily token budget. Both
    are off when None. Searches match each record as it was
    ``search_index_lag_seconds`` ago by ``clock()``, so a new record becomes
    searchable only after that lag. ``utc_now`` supplies the time for
    timestamps and for the budget's reset at UTC midnight.

    ``tokens_spent`` counts every token charged since start, and
    ``reset_daily_budget()`` does not clear it. ``request_costs`` lists
    ``(method, path, tokens)`` for each charged request.
    """

    def __init__(
        self,
        token: str = "sandbox-token",
        *,
        burst_limit: int | None = None,
        daily_token_budget: int | None = None,
        search_index_lag_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        utc_now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if burst_limit is not None and burst_limit < 1:
            raise ValueError(f"burst_limit must be at least 1, got {burst_limit}")
        if daily_token_budget is not None and daily_token_budget < 0:
            raise ValueError(
                f"daily_token_budget must be >= 0, got {daily_token_budget}"
            )
        self.token = token
        self.search_index_lag_seconds = search_index_lag_seconds
        self.persons: dict[int, Entity] = {}
        self.organizations: dict[int, Entity] = {}
        self.deals: dict[int, Entity] = {}
        self.activities: dict[int, Entity] = {}
        self.users: dict[int, Entity] = {}
        self.activity_types: dict[int, Entity] = {}
        self.pipelines: dict[int, Entity] = {}
        self.stages: dict[int, Entity] = {}
        self.tokens_spent = 0
        self.request_costs: list[tuple[str, str, int]] = []

        self._lock = threading.RLock()
        self._clock = clock
        self._utc_now = utc_now
        self._burst = None if burst_limit is None else _BurstWindow(burst_limit, clock)
        # Pipedrive's rate-limit page gives searches their own allowance of
        # 10 per 2 seconds on every plan; it applies whenever a burst limit
        # is set.
        self._search_burst = (
            None
            if burst_limit is None
            else _BurstWindow(min(SEARCH_BURST_LIMIT, burst_limit), clock)
        )
        self._budget = (
            None
            if daily_token_budget is None
            else _DailyBudget(daily_token_budget, utc_now)
        )
        self._next_ids = dict.fromkeys(ENTITY_KINDS, 1)
        # Snapshots of each searchable record with the clock time of the write.
        self._search_history: dict[tuple[str, int], list[tuple[float, Entity]]] = {}
        self._routes = self._build_routes()
        self._seed()

    # --- Helpers for tests and the demo ------------------------------------

    @property
    def tokens_remaining(self) -> int | None:
        """Tokens left in today's budget, or None when no budget is set."""
        with self._lock:
            return None if self._budget is None else self._budget.remaining()

    def reset_daily_budget(self) -> None:
        """Refill the daily token budget, as UTC midnight would."""
        with self._lock:
            if self._budget is not None:
                self._budget.reset()

    def add_user(self, name: str, email: str) -> int:
        """Add an active, non-admin user to the company and return its id."""
        with self._lock:
            user_id = max(self.users) + 1
            self.users[user_id] = self._new_user(user_id, name, email, is_admin=False)
            return user_id

    def live(self, kind: str) -> list[Entity]:
        """Return copies of the records of ``kind`` that are not deleted, by id."""
        with self._lock:
            store = self._entity_store(kind)
            items = [
                item for _, item in sorted(store.items()) if not item["is_deleted"]
            ]
            return copy.deepcopy(items)

    def ui_create(self, kind: str, payload: Entity) -> Entity:
        """Create a record as a user in the web app would, with API validation.

        Raises ``PipedriveApiError`` where the API would respond with 400. UI
        actions cost no API tokens.
        """
        with self._lock:
            self._entity_store(kind)
            return copy.deepcopy(self._create(kind, payload))

    def ui_create_person(
        self, name: str, email: str | None = None, **fields: Any
    ) -> Entity:
        """Create a person with an optional primary work email, as a user would."""
        payload: Entity = {"name": name, **fields}
        if email is not None:
            payload["emails"] = [{"value": email}]
        return self.ui_create("persons", payload)

    def ui_update(self, kind: str, item_id: int, payload: Entity) -> Entity:
        """Edit a record as a user would; only the given fields change."""
        with self._lock:
            self._entity_store(kind)
            return copy.deepcopy(self._update(kind, item_id, payload))

    def ui_delete(self, kind: str, item_id: int) -> None:
        """Soft-delete a record as a user would."""
        with self._lock:
            self._entity_store(kind)
            self._delete(kind, item_id)

    def ui_merge_persons(self, from_id: int, into_id: int) -> Entity:
        """Merge person ``from_id`` into ``into_id`` and return the survivor.

        ``from_id`` disappears (a later GET returns 404) and its deals and
        activities move to ``into_id``.
        """
        with self._lock:
            self._require_live("persons", into_id)
            return copy.deepcopy(self._merge_persons(from_id, into_id))

    # --- Request handling --------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Serve one request; the server calls this from several threads."""
        with self._lock:
            try:
                return self._serve(request)
            except Exception:  # an emulator bug returns 500, not a dropped socket
                logger.exception(
                    "Pipedrive emulator failed on %s %s", request.method, request.path
                )
                error = PipedriveApiError(500, "Emulator error", "ERR_INTERNAL")
                return _error_response(request.path, error)

    def _serve(self, request: Request) -> Response:
        if not self._is_authorized(request):
            return Response.json(401, UNAUTHORIZED_BODY)
        try:
            route, match = self._resolve(request)
        except PipedriveApiError as error:
            # Unknown paths and methods have no documented cost; they are free.
            return self._with_limit_headers(_error_response(request.path, error))

        is_search = _is_search(request.path)
        rejection = self._check_limits(route.cost, is_search)
        if rejection is not None:
            return rejection
        self._charge(request, route.cost, is_search)

        try:
            response = route.handler(request, match)
        except PipedriveApiError as error:
            # Strict choice: a request that reached an endpoint pays its cost
            # even when it fails with 400 or 404.
            response = _error_response(request.path, error)
        return self._with_limit_headers(response)

    def _is_authorized(self, request: Request) -> bool:
        header = request.headers.get("x-api-token")
        if header is not None:
            return header == self.token
        # Strict choice: the legacy api_token query parameter is accepted only
        # on /api/v1 paths, because v2 support for it is undocumented.
        if request.path.startswith("/api/v1/"):
            return request.arg("api_token") == self.token
        return False

    def _resolve(self, request: Request) -> tuple[_Route, re.Match[str]]:
        allowed_methods = []
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if route.method == request.method:
                return route, match
            allowed_methods.append(route.method)
        if allowed_methods:
            allowed = ", ".join(allowed_methods)
            message = (
                f"Method {request.method} not allowed on {request.path}; use {allowed}"
            )
            raise PipedriveApiError(405, message, "ERR_METHOD_NOT_ALLOWED")
        raise _not_found(f"Unknown path {request.path}")

    def _check_limits(self, cost: int, is_search: bool = False) -> Response | None:
        """Return a 429 response when the burst window or daily budget is used up.

        Rejected requests cost no tokens and take no slot in the burst window.
        """
        if self._burst is not None and not self._burst.has_room():
            return self._rate_limited(self._burst.seconds_until_free())
        search = self._search_burst
        if is_search and search is not None and not search.has_room():
            return self._rate_limited(search.seconds_until_free())
        if self._budget is not None and not self._budget.can_afford(cost):
            response = self._rate_limited(self._budget.seconds_until_reset())
            # NOTE: reports 0 even when a few tokens are left but fewer than
            # this request costs; real Pipedrive's behaviour here is unknown.
            response.headers["x-daily-ratelimit-token-remaining"] = "0"
            return response
        return None

    def _rate_limited(self, retry_after_seconds: int) -> Response:
        headers = {"retry-after": str(retry_after_seconds)}
        return self._with_limit_headers(Response.json(429, RATE_LIMITED_BODY, headers))

    def _charge(self, request: Request, cost: int, is_search: bool = False) -> None:
        if self._burst is not None:
            self._burst.acquire()
        if is_search and self._search_burst is not None:
            self._search_burst.acquire()
        if self._budget is not None:
            self._budget.charge(cost)
        self.tokens_spent += cost
        self.request_costs.append((request.method, request.path, cost))

    def _with_limit_headers(self, response: Response) -> Response:
        if self._burst is not None:
            response.headers.update(self._burst.headers())
        if self._budget is not None:
            response.headers.update(self._budget.headers())
        return response

    def _build_routes(self) -> list[_Route]:
        entity = "(?P<kind>persons|organizations|deals|activities)"
        searchable = "(?P<kind>persons|organizations|deals)"
        item_id = "(?P<id>[0-9]+)"
        table: list[tuple[str, str, int, Callable[[Request, re.Match[str]], Response]]]
        table = [
            ("GET", f"/api/v2/{searchable}/search", COST_SEARCH, self._handle_search),
            ("GET", "/api/v2/itemSearch", COST_SEARCH, self._handle_item_search),
            ("GET", "/api/v2/deals/archived", COST_SEARCH, self._handle_archived_deals),
            ("GET", f"/api/v2/{entity}", COST_LIST, self._handle_list),
            ("POST", f"/api/v2/{entity}", COST_CREATE, self._handle_create),
            ("GET", f"/api/v2/{entity}/{item_id}", COST_GET_ONE, self._handle_get),
            ("PATCH", f"/api/v2/{entity}/{item_id}", COST_UPDATE, self._handle_update),
            ("DELETE", f"/api/v2/{entity}/{item_id}", COST_DELETE, self._handle_delete),
            ("GET", "/api/v2/pipelines", COST_PIPELINE_LIST, self._handle_pipelines),
            (
                "GET",
                f"/api/v2/pipelines/{item_id}",
                COST_GET_ONE,
                self._handle_pipeline,
            ),
            ("GET", "/api/v2/stages", COST_PIPELINE_LIST, self._handle_stages),
            ("GET", f"/api/v2/stages/{item_id}", COST_GET_ONE, self._handle_stage),
            ("GET", "/api/v1/users", COST_V1_USERS, self._handle_users),
            ("GET", "/api/v1/users/me", COST_V1_ME, self._handle_me),
            (
                "GET",
                "/api/v1/activityTypes",
                COST_V1_ACTIVITY_TYPES,
                self._handle_activity_types,
            ),
            (
                "PUT",
                f"/api/v1/persons/{item_id}/merge",
                COST_V1_MERGE,
                self._handle_merge,
            ),
        ]
        return [
            _Route(method, re.compile(pattern), cost, handler)
            for method, pattern, cost, handler in table
        ]

    # --- v2 entity endpoints -----------------------------------------------

    def _handle_list(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        query = _Query(request, LIST_PARAMS[kind])
        items = self._list_candidates(kind, query, archived=False)
        return self._list_page(kind, items, query)

    def _handle_archived_deals(
        self, request: Request, match: re.Match[str]
    ) -> Response:
        query = _Query(request, LIST_PARAMS["deals"])
        items = self._list_candidates("deals", query, archived=True)
        return self._list_page("deals", items, query)

    def _list_page(self, kind: str, items: list[Entity], query: _Query) -> Response:
        filters = _list_filters(kind, query)
        selected = [item for item in items if all(test(item) for test in filters)]
        page, next_cursor = _page_by_key(selected, query, SORT_FIELDS[kind])
        view = _view_for(query)
        return _list_response(
            [_present(kind, item, view) for item in page], next_cursor
        )

    def _list_candidates(
        self, kind: str, query: _Query, *, archived: bool
    ) -> list[Entity]:
        items = list(self._entity_store(kind).values())
        if kind != "deals":
            return [item for item in items if not item["is_deleted"]]
        # Deals: no status means every deal that is not deleted; status=deleted
        # lists deleted deals. Archived deals appear only on /deals/archived.
        status = query.choice("status", ("open", "won", "lost", "deleted"))
        if status == "deleted":
            return [deal for deal in items if deal["is_deleted"]]
        items = [
            deal
            for deal in items
            if not deal["is_deleted"] and deal["is_archived"] == archived
        ]
        return items if status is None else [d for d in items if d["status"] == status]

    def _handle_get(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        view = _view_for(_Query(request, SINGLE_PARAMS[kind]))
        item = self._require_live(kind, int(match["id"]))
        return _data_response(_present(kind, item, view))

    def _handle_create(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        view = _view_for(_Query(request, SINGLE_PARAMS[kind]))
        item = self._create(kind, _read_json_object(request))
        return _data_response(_present(kind, item, view))

    def _handle_update(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        view = _view_for(_Query(request, SINGLE_PARAMS[kind]))
        item = self._update(kind, int(match["id"]), _read_json_object(request))
        return _data_response(_present(kind, item, view))

    def _handle_delete(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        _Query(request, ())
        item_id = int(match["id"])
        self._delete(kind, item_id)
        return _data_response({"id": item_id})

    # --- Writes ------------------------------------------------------------

    def _create(self, kind: str, body: Entity) -> Entity:
        fields = self._validate_body(kind, body, creating=True)
        now = self._now()
        item = TEMPLATES[kind](self._next_ids[kind], now)
        self._apply(kind, item, fields, now, creating=True)
        self._next_ids[kind] += 1
        self._entity_store(kind)[item["id"]] = item
        self._index_for_search(kind, item)
        return item

    def _update(self, kind: str, item_id: int, body: Entity) -> Entity:
        current = self._require_live(kind, item_id)
        fields = self._validate_body(kind, body, creating=False)
        if not fields:
            # Strict choice: an empty PATCH is almost always a client bug.
            raise _bad_request("PATCH body is empty; send at least one field to change")
        now = self._now()
        item = copy.deepcopy(current)
        self._apply(kind, item, fields, now, creating=False)
        if "update_time" not in fields:
            item["update_time"] = now
        self._entity_store(kind)[item_id] = item
        self._index_for_search(kind, item)
        return item

    def _delete(self, kind: str, item_id: int) -> None:
        item = self._require_live(kind, item_id)
        item["is_deleted"] = True
        item["update_time"] = self._now()

    def _validate_body(self, kind: str, body: Entity, *, creating: bool) -> Entity:
        spec = FIELD_SPECS[kind]
        for key in body:
            _check_writable(kind, key)
        fields = {key: spec[key](key, value) for key, value in body.items()}
        required = REQUIRED_ON_CREATE.get(kind)
        if creating and required is not None and required not in fields:
            raise _bad_request(f"Missing required field {required!r} for {kind}")
        self._check_references(fields)
        return fields

    def _check_references(self, fields: Entity) -> None:
        for key, value in fields.items():
            target = REFERENCE_KINDS.get(key)
            if target is not None and value is not None:
                self._require_reference(key, target, value)
        for index, participant in enumerate(fields.get("participants", [])):
            name = f"participants[{index}].person_id"
            self._require_reference(name, "persons", participant["person_id"])
        for index, attendee in enumerate(fields.get("attendees", [])):
            if attendee["person_id"] is not None:
                name = f"attendees[{index}].person_id"
                self._require_reference(name, "persons", attendee["person_id"])
            if attendee["user_id"] is not None:
                name = f"attendees[{index}].user_id"
                self._require_reference(name, "users", attendee["user_id"])

    def _require_reference(self, key: str, kind: str, item_id: Any) -> None:
        stores = {
            "persons": self.persons,
            "organizations": self.organizations,
            "deals": self.deals,
            "users": self.users,
            "pipelines": self.pipelines,
            "stages": self.stages,
        }
        item = stores.get(kind, {}).get(item_id)
        if item is None or item.get("is_deleted") or not item.get("active_flag", True):
            raise _bad_request(
                f"Invalid {key}: {item_id!r} does not exist or is deleted"
            )

    def _apply(
        self, kind: str, item: Entity, fields: Entity, now: str, *, creating: bool
    ) -> None:
        if kind == "deals":
            self._apply_deal(item, fields, now)
        elif kind == "activities":
            self._apply_activity(item, fields, now, creating=creating)
        else:
            item.update(fields)
        if kind == "persons" and "name" in fields:
            item["first_name"], item["last_name"] = _split_name(fields["name"])

    def _apply_deal(self, deal: Entity, fields: Entity, now: str) -> None:
        previous_stage, previous_status = deal["stage_id"], deal["status"]
        deal.update(fields)
        self._place_deal_in_pipeline(deal, fields)
        if previous_stage is not None and deal["stage_id"] != previous_stage:
            deal["stage_change_time"] = now
        if deal["status"] != previous_status:
            _stamp_status_change(deal, fields, now)
        if deal["lost_reason"] is not None and deal["status"] != "lost":
            # Strict choice: Pipedrive documents lost_reason only for lost deals.
            raise _bad_request("lost_reason is allowed only when status is lost")
        if "is_archived" in fields and "archive_time" not in fields:
            deal["archive_time"] = now if deal["is_archived"] else None

    def _place_deal_in_pipeline(self, deal: Entity, fields: Entity) -> None:
        """Keep ``stage_id`` and ``pipeline_id`` consistent.

        A given stage decides the pipeline. A pipeline without a stage, or a
        new deal with neither, gets the first stage of that pipeline.
        """
        if "stage_id" in fields:
            stage_pipeline = self.stages[fields["stage_id"]]["pipeline_id"]
            if fields.get("pipeline_id", stage_pipeline) != stage_pipeline:
                raise _bad_request(
                    f"stage_id {fields['stage_id']} belongs to pipeline "
                    f"{stage_pipeline}, not pipeline_id {fields['pipeline_id']}"
                )
            deal["pipeline_id"] = stage_pipeline
            return
        pipeline_id = deal["pipeline_id"] or DEFAULT_PIPELINE_ID
        stage_id = deal["stage_id"]
        if stage_id is None or self.stages[stage_id]["pipeline_id"] != pipeline_id:
            deal["stage_id"] = self._first_stage_id(pipeline_id)
            deal["pipeline_id"] = pipeline_id

    def _first_stage_id(self, pipeline_id: int) -> int:
        stages = [
            stage
            for stage in self.stages.values()
            if stage["pipeline_id"] == pipeline_id and not stage["is_deleted"]
        ]
        if not stages:
            raise _bad_request(f"Pipeline {pipeline_id} has no stages")
        return int(min(stages, key=lambda stage: stage["order_nr"])["id"])

    def _apply_activity(
        self, activity: Entity, fields: Entity, now: str, *, creating: bool
    ) -> None:
        if "type" in fields:
            self._require_activity_type(fields["type"])
        was_done = activity["done"]
        activity.update(fields)
        if "participants" in fields:
            activity["person_id"] = _primary_person_id(fields["participants"])
        if activity["done"] and not was_done:
            activity["marked_as_done_time"] = now
        elif not activity["done"]:
            activity["marked_as_done_time"] = None
        if creating and "subject" not in fields:
            # NOTE: Pipedrive's default subject is a guess: the type's name.
            activity["subject"] = self._activity_type_name(activity["type"])

    def _require_activity_type(self, key_string: str) -> None:
        known = [
            t["key_string"] for t in self.activity_types.values() if t["active_flag"]
        ]
        if key_string not in known:
            raise _bad_request(
                f"Invalid type: unknown activity type {key_string!r}; "
                f"known types: {', '.join(known)}"
            )

    def _activity_type_name(self, key_string: str) -> str:
        for activity_type in self.activity_types.values():
            if activity_type["key_string"] == key_string:
                return str(activity_type["name"])
        return key_string

    # --- Person merge ------------------------------------------------------

    def _handle_merge(self, request: Request, match: re.Match[str]) -> Response:
        _Query(request, ())
        body = _read_json_object(request)
        for key in body:
            if key != "merge_with_id":
                raise _bad_request(f"Unknown field {key!r}; allowed: merge_with_id")
        if "merge_with_id" not in body:
            raise _bad_request("Missing required field 'merge_with_id'")
        into_id = _integer("merge_with_id", body["merge_with_id"])
        from_id = int(match["id"])
        self._require_live("persons", from_id)
        self._require_reference("merge_with_id", "persons", into_id)
        merged = self._merge_persons(from_id, into_id)
        # NOTE: the v1 response shape of merge is not emulated. This returns the
        # v2 person plus merge_what_id, so clients should read only ids from it.
        return _data_response({**copy.deepcopy(merged), "merge_what_id": from_id})

    def _merge_persons(self, from_id: int, into_id: int) -> Entity:
        source = self._require_live("persons", from_id)
        if from_id == into_id:
            raise _bad_request("A person cannot be merged with itself")
        now = self._now()
        target = copy.deepcopy(self._require_live("persons", into_id))
        for key in ("emails", "phones"):
            target[key] = _merge_contacts(target[key], source[key])
        if target["org_id"] is None:
            target["org_id"] = source["org_id"]
        target["update_time"] = now
        self.persons[into_id] = target
        self._index_for_search("persons", target)

        for deal in self.deals.values():
            if deal["person_id"] == from_id:
                deal["person_id"] = into_id
                deal["update_time"] = now
                self._index_for_search("deals", deal)
        for activity in self.activities.values():
            if _move_activity_person(activity, from_id, into_id):
                activity["update_time"] = now

        del self.persons[from_id]
        self._search_history.pop(("persons", from_id), None)
        return target

    # --- Search endpoints --------------------------------------------------

    def _handle_search(self, request: Request, match: re.Match[str]) -> Response:
        kind = match["kind"]
        query = _Query(request, SEARCH_PARAMS[kind])
        term, exact = _search_term(query)
        fields = query.names("fields", SEARCH_FIELDS[kind]) or SEARCH_FIELDS[kind]
        filters = _search_filters(kind, query)
        hits = [
            hit
            for hit in self._search(kind, term, fields, exact)
            if all(test(hit.item) for test in filters)
        ]
        return self._search_page(sorted(hits, key=_hit_order), query)

    def _handle_item_search(self, request: Request, match: re.Match[str]) -> Response:
        query = _Query(request, ITEM_SEARCH_PARAMS)
        term, exact = _search_term(query)
        if query.boolean("search_for_related_items"):
            raise _bad_request("search_for_related_items=true is not emulated")
        item_types = query.names("item_types", ITEM_TYPES) or ITEM_TYPES
        fields = query.names("fields", ITEM_SEARCH_FIELDS) or ITEM_SEARCH_FIELDS
        hits: list[_SearchHit] = []
        for item_type in item_types:
            # Products, leads, files and projects are not emulated, so a search
            # for them finds nothing.
            kind = ITEM_TYPE_KINDS.get(item_type)
            if kind is None:
                continue
            kind_fields = [
                field for field in fields if field in KIND_SEARCH_FIELDS[kind]
            ]
            if kind_fields:
                hits.extend(self._search(kind, term, kind_fields, exact))
        return self._search_page(sorted(hits, key=_hit_order), query)

    def _search_page(self, hits: list[_SearchHit], query: _Query) -> Response:
        page, next_cursor = _page_by_offset(hits, query)
        items = [
            {"result_score": hit.score, "item": self._search_item(hit)} for hit in page
        ]
        payload = {
            "success": True,
            "data": {"items": items},
            "additional_data": {"next_cursor": next_cursor},
        }
        return Response.json(200, payload)

    def _search(
        self, kind: str, term: str, fields: Iterable[str], exact: bool
    ) -> list[_SearchHit]:
        search_fields = tuple(fields)
        hits = []
        for snapshot in self._indexed_snapshots(kind):
            values = self._search_values(kind, snapshot)
            candidates = [
                value for field in search_fields for value in values.get(field, [])
            ]
            score = _match_score(term, candidates, exact)
            if score is None:
                continue
            matched_custom = []
            if "custom_fields" in search_fields:
                custom = values["custom_fields"]
                matched_custom = [v for v in custom if _match_score(term, [v], exact)]
            hits.append(_SearchHit(score, kind, snapshot, matched_custom))
        return hits

    def _search_values(self, kind: str, item: Entity) -> dict[str, list[str]]:
        """Return the text of each searchable field of a record."""
        values: dict[str, list[str]] = {
            "custom_fields": _custom_field_strings(item),
            "notes": [],  # notes are not emulated
        }
        organization = self._live_or_none(self.organizations, item.get("org_id"))
        org_names = [] if organization is None else [organization["name"]]
        if kind == "persons":
            values["name"] = [item["name"]]
            values["email"] = [entry["value"] for entry in item["emails"]]
            values["phone"] = [entry["value"] for entry in item["phones"]]
            values["organization_name"] = org_names
        elif kind == "organizations":
            values["name"] = [item["name"]]
            address = (item["address"] or {}).get("value")
            values["address"] = [] if address is None else [address]
        else:
            person = self._live_or_none(self.persons, item["person_id"])
            values["title"] = [item["title"]]
            values["person_name"] = [] if person is None else [person["name"]]
            values["organization_name"] = org_names
        return values

    def _search_item(self, hit: _SearchHit) -> Entity:
        item = hit.item
        result: Entity = {"id": item["id"], "type": SEARCH_ITEM_TYPES[hit.kind]}
        if hit.kind == "organizations":
            result["name"] = item["name"]
            result["address"] = (item["address"] or {}).get("value")
        elif hit.kind == "persons":
            result["name"] = item["name"]
            result["phones"] = [entry["value"] for entry in item["phones"]]
            result["emails"] = [entry["value"] for entry in item["emails"]]
        else:
            result.update(self._deal_search_fields(item))
        result["visible_to"] = item["visible_to"]
        result["owner"] = {"id": item["owner_id"]}
        if hit.kind != "organizations":
            result["organization"] = self._organization_summary(item["org_id"])
        result["custom_fields"] = hit.matched_custom_fields
        result["notes"] = []
        return result

    def _deal_search_fields(self, deal: Entity) -> Entity:
        stage = self.stages.get(deal["stage_id"])
        person = self._live_or_none(self.persons, deal["person_id"])
        return {
            "title": deal["title"],
            "value": deal["value"],
            "currency": deal["currency"],
            "status": deal["status"],
            "stage": None
            if stage is None
            else {"id": stage["id"], "name": stage["name"]},
            "person": None
            if person is None
            else {"id": person["id"], "name": person["name"]},
        }

    def _organization_summary(self, org_id: int | None) -> Entity | None:
        organization = self._live_or_none(self.organizations, org_id)
        if organization is None:
            return None
        address = (organization["address"] or {}).get("value")
        return {
            "id": organization["id"],
            "name": organization["name"],
            "address": address,
        }

    def _index_for_search(self, kind: str, item: Entity) -> None:
        """Record a write so that searches see it once the index lag has passed.

        Snapshots older than the newest one already visible are dropped.
        """
        if kind not in SEARCH_FIELDS:
            return
        now = self._clock()
        history = self._search_history.setdefault((kind, item["id"]), [])
        history.append((now, copy.deepcopy(item)))
        cutoff = now - self.search_index_lag_seconds
        visible = [
            index for index, (written, _) in enumerate(history) if written <= cutoff
        ]
        if visible:
            del history[: visible[-1]]

    def _indexed_snapshots(self, kind: str) -> list[Entity]:
        """Return the indexed state of each record of ``kind``.

        The index lags behind writes, but a record deleted or merged away is
        hidden at once, even within the lag.
        """
        cutoff = self._clock() - self.search_index_lag_seconds
        store = self._entity_store(kind)
        snapshots = []
        for (history_kind, item_id), history in self._search_history.items():
            live = store.get(item_id)
            if history_kind != kind or live is None or live["is_deleted"]:
                continue
            indexed = [snapshot for written, snapshot in history if written <= cutoff]
            if indexed:
                snapshots.append(indexed[-1])
        return snapshots

    # --- Pipelines, stages and v1 endpoints --------------------------------

    def _handle_pipelines(self, request: Request, match: re.Match[str]) -> Response:
        query = _Query(request, ("sort_by", "sort_direction", "limit", "cursor"))
        items = [p for p in self.pipelines.values() if not p["is_deleted"]]
        page, next_cursor = _page_by_key(items, query, SORT_FIELDS["pipelines"])
        return _list_response(copy.deepcopy(page), next_cursor)

    def _handle_pipeline(self, request: Request, match: re.Match[str]) -> Response:
        _Query(request, ())
        pipeline = self._live_or_none(self.pipelines, int(match["id"]))
        if pipeline is None:
            raise _not_found(f"Pipeline {match['id']} not found")
        return _data_response(copy.deepcopy(pipeline))

    def _handle_stages(self, request: Request, match: re.Match[str]) -> Response:
        params = ("pipeline_id", "sort_by", "sort_direction", "limit", "cursor")
        query = _Query(request, params)
        pipeline_id = query.integer("pipeline_id")
        items = [
            stage
            for stage in self.stages.values()
            if not stage["is_deleted"]
            and (pipeline_id is None or stage["pipeline_id"] == pipeline_id)
        ]
        page, next_cursor = _page_by_key(items, query, SORT_FIELDS["stages"])
        return _list_response(copy.deepcopy(page), next_cursor)

    def _handle_stage(self, request: Request, match: re.Match[str]) -> Response:
        _Query(request, ())
        stage = self._live_or_none(self.stages, int(match["id"]))
        if stage is None:
            raise _not_found(f"Stage {match['id']} not found")
        return _data_response(copy.deepcopy(stage))

    def _handle_users(self, request: Request, match: re.Match[str]) -> Response:
        _Query(request, ())
        return _data_response([copy.deepcopy(u) for _, u in sorted(self.users.items())])

    def _handle_me(self, request: Request, match: re.Match[str]) -> Response:
        _Query(request, ())
        me = copy.deepcopy(self.users[TOKEN_USER_ID])
        me.update(company_id=1, company_name="Sandbox", company_domain=COMPANY_DOMAIN)
        return _data_response(me)

    def _handle_activity_types(
        self, request: Request, match: re.Match[str]
    ) -> Response:
        _Query(request, ())
        types = [copy.deepcopy(t) for _, t in sorted(self.activity_types.items())]
        return _data_response(types)

    # --- Internals ---------------------------------------------------------

    def _now(self) -> str:
        return _format_timestamp(self._utc_now())

    def _entity_store(self, kind: str) -> dict[int, Entity]:
        stores = {
            "persons": self.persons,
            "organizations": self.organizations,
            "deals": self.deals,
            "activities": self.activities,
        }
        if kind not in stores:
            raise ValueError(f"Unknown kind {kind!r}; use one of {', '.join(stores)}")
        return stores[kind]

    def _require_live(self, kind: str, item_id: int) -> Entity:
        """Return the stored record, or raise 404 when it is missing or deleted.

        Strict choice: a soft-deleted record gets 404 rather than 200 with
        is_deleted true, because the documentation does not say which.
        """
        item = self._live_or_none(self._entity_store(kind), item_id)
        if item is None:
            raise _not_found(f"{ENTITY_LABELS[kind]} {item_id} not found")
        return item

    @staticmethod
    def _live_or_none(store: dict[int, Entity], item_id: int | None) -> Entity | None:
        item = None if item_id is None else store.get(item_id)
        return None if item is None or item.get("is_deleted") else item

    def _new_user(
        self, user_id: int, name: str, email: str, *, is_admin: bool
    ) -> Entity:
        return {
            "id": user_id,
            "name": name,
            "email": email,
            "active_flag": True,
            "is_admin": is_admin,
            "timezone_name": "UTC",
        }

    def _seed(self) -> None:
        now = self._utc_now()
        user = self._new_user(
            TOKEN_USER_ID, "Sandbox Admin", "admin@sandbox.example", is_admin=True
        )
        self.users[TOKEN_USER_ID] = user
        for order, (key_string, name) in enumerate(ACTIVITY_TYPE_SEED, start=1):
            self.activity_types[order] = {
                "id": order,
                "order_nr": order,
                "name": name,
                "key_string": key_string,
                "icon_key": key_string,
                "active_flag": True,
                "color": None,
                "is_custom_flag": False,
                "add_time": _v1_time(now),
                "update_time": _v1_time(now),
            }
        self._seed_pipeline(_format_timestamp(now))

    def _seed_pipeline(self, now: str) -> None:
        self.pipelines[DEFAULT_PIPELINE_ID] = {
            "id": DEFAULT_PIPELINE_ID,
            "name": "Sales",
            "order_nr": 1,
            "is_deleted": False,
            "is_deal_probability_enabled": False,
            "add_time": now,
            "update_time": now,
        }
        for stage_id, name in STAGE_SEED:
            self.stages[stage_id] = {
                "id": stage_id,
                "order_nr": stage_id,
                "name": name,
                "is_deleted": False,
                "deal_probability": 100,
                "pipeline_id": DEFAULT_PIPELINE_ID,
                "is_deal_rot_enabled": False,
                "days_to_rotten": None,
                "add_time": now,
                "update_time": now,
            }


# --- Helpers that need the tables above -------------------------------------


def _stamp_status_change(deal: Entity, fields: Entity, now: str) -> None:
    """Set the won, lost and close times after a status change.

    Times given explicitly in the same request are kept.
    """
    status = deal["status"]
    stamps = {
        "won_time": now if status == "won" else None,
        "lost_time": now if status == "lost" else None,
        "close_time": now if status in ("won", "lost") else None,
    }
    for key, value in stamps.items():
        if key not in fields:
            deal[key] = value
    for key in ("won", "lost", "close"):
        moment = deal[f"{key}_time"]
        deal[f"local_{key}_date"] = None if moment is None else moment[:10]


def _merge_contacts(target: list[Entity], source: list[Entity]) -> list[Entity]:
    """Append the source's emails or phones that the target lacks, as secondary."""
    merged = copy.deepcopy(target)
    known = {entry["value"].casefold() for entry in merged}
    for entry in source:
        if entry["value"].casefold() not in known:
            merged.append({**entry, "primary": False})
            known.add(entry["value"].casefold())
    if merged and not any(entry["primary"] for entry in merged):
        merged[0]["primary"] = True
    return merged


def _move_activity_person(activity: Entity, from_id: int, into_id: int) -> bool:
    """Point an activity's references to ``from_id`` at ``into_id``.

    Returns whether anything changed.
    """
    moved = bool(activity["person_id"] == from_id)
    participants: list[Entity] = []
    for participant in activity["participants"]:
        person_id = participant["person_id"]
        moved = moved or person_id == from_id
        person_id = into_id if person_id == from_id else person_id
        existing = next((p for p in participants if p["person_id"] == person_id), None)
        if existing is None:
            participants.append(
                {"person_id": person_id, "primary": participant["primary"]}
            )
        else:
            existing["primary"] = existing["primary"] or participant["primary"]
    activity["participants"] = participants
    activity["person_id"] = _primary_person_id(participants)
    for attendee in activity["attendees"]:
        if attendee["person_id"] == from_id:
            attendee["person_id"] = into_id
            moved = True
    return moved


def _field_equals(field: str, expected: Any) -> Callable[[Entity], bool]:
    return lambda item: bool(item.get(field) == expected)


def _list_filters(kind: str, query: _Query) -> list[Callable[[Entity], bool]]:
    """Build the record tests for the filters a list request gives."""
    tests: list[Callable[[Entity], bool]] = []
    ids = query.id_list("ids")
    if ids is not None:
        tests.append(lambda item: item["id"] in ids)
    for name, read in EQUALITY_FILTERS[kind].items():
        expected = read(query, name)
        if expected is not None:
            tests.append(_field_equals(name, expected))
    since = query.timestamp("updated_since")
    if since is not None:
        tests.append(lambda item: bool(item["update_time"] >= since))
    until = query.timestamp("updated_until")
    if until is not None:
        tests.append(lambda item: bool(item["update_time"] < until))
    return tests


def _search_filters(kind: str, query: _Query) -> list[Callable[[Entity], bool]]:
    tests: list[Callable[[Entity], bool]] = []
    if kind in ("persons", "deals"):
        org_id = query.integer("organization_id")
        if org_id is not None:
            tests.append(_field_equals("org_id", org_id))
    if kind == "deals":
        person_id = query.integer("person_id")
        if person_id is not None:
            tests.append(_field_equals("person_id", person_id))
        status = query.choice("status", ("open", "won", "lost"))
        if status is not None:
            tests.append(_field_equals("status", status))
    return tests


QueryReader = Callable[[_Query, str], Any]
EQUALITY_FILTERS: dict[str, dict[str, QueryReader]] = {
    "persons": {"owner_id": _Query.integer, "org_id": _Query.integer},
    "organizations": {"owner_id": _Query.integer},
    "deals": {
        "owner_id": _Query.integer,
        "person_id": _Query.integer,
        "org_id": _Query.integer,
        "pipeline_id": _Query.integer,
        "stage_id": _Query.integer,
    },
    "activities": {
        "owner_id": _Query.integer,
        "deal_id": _Query.integer,
        "person_id": _Query.integer,
        "org_id": _Query.integer,
        "lead_id": _Query.text,
        "done": _Query.boolean,
    },
}
LIST_COMMON_PARAMS = (
    "ids",
    "updated_since",
    "updated_until",
    "sort_by",
    "sort_direction",
    "limit",
    "cursor",
)
SINGLE_PARAMS = {
    "persons": ("custom_fields",),
    "organizations": ("custom_fields",),
    "deals": ("custom_fields",),
    "activities": ("include_fields",),
}
LIST_PARAMS = {
    kind: (*LIST_COMMON_PARAMS, *EQUALITY_FILTERS[kind], *SINGLE_PARAMS[kind])
    + (("status",) if kind == "deals" else ())
    for kind in ENTITY_KINDS
}
SORT_FIELDS = {
    "persons": ("id", "update_time", "add_time"),
    "organizations": ("id", "update_time", "add_time"),
    "deals": ("id", "update_time", "add_time"),
    "activities": ("id", "update_time", "add_time", "due_date"),
    "pipelines": ("id", "update_time", "add_time"),
    "stages": ("id", "update_time", "add_time"),
}
