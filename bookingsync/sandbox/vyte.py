"""Emulator of the Vyte v2 REST API, served by ``EmulatorServer``.

``VyteEmulator`` keeps one organization, its users and its events in memory and
serves the endpoints bookingsync uses: ``GET /v2/auth/test``, ``GET /v2/users``,
and list, retrieve, create, update, confirm and cancel for events. Scenario
methods (``reschedule``, ``cancel``, ``remove`` and so on) change events the way
a Vyte user would in the web app. Fault methods make the next responses fail.

Where Vyte's reference is silent, the emulator takes the stricter reading so
that a client passing against it does not rely on lenient behaviour. Each such
choice carries a comment that starts with "Strict:".

Error bodies are ``{"error": "<message>"}``. Vyte documents only the status
codes (400, 401, 403, 404, 500, 503) and not the body, so clients must branch
on the status and never parse an error body.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from loguru import logger

from bookingsync.sandbox.server import Request, Response
from bookingsync.sandbox.vyte_events import (
    JsonObject,
    build_event,
    format_timestamp,
    is_object_id,
    load_zone,
    new_date_entry,
    new_invitee_entry,
    new_message_entry,
    new_object_id,
    new_place_entry,
    parse_local_datetime,
    parse_timestamp,
)

EventPredicate = Callable[[JsonObject], bool]

LANGUAGES = frozenset({"fr", "en", "es", "it", "pt", "de", "sv", "nl"})

LIST_PARAMETERS = frozenset(
    {
        "limit",
        "q",
        "filter",
        "creator_users",
        "creator_emails",
        "invitee_users",
        "invitee_emails",
        "app_id",
        "group_ids",
    }
)
CREATE_FIELDS = frozenset(
    {
        "title",
        "created_by",
        "dates",
        "places",
        "invitees",
        "messages",
        "timezone",
        "lang",
        "locale",
        "vyteme",
        "confirmed",
    }
)
UPDATE_FIELDS = frozenset({"title", "dates", "places"})

_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Vyte - Maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1></body></html>\n"
)


class _ApiError(Exception):
    """An HTTP error that ``handle`` turns into a JSON error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Fault:
    kind: Literal["status", "truncate", "html"]
    status: int = 200


class VyteEmulator:
    """An in-memory Vyte organization served through the Vyte v2 API.

    ``default_limit`` applies when ``GET /v2/events`` has no ``limit``.
    ``max_limit`` caps every listing without telling the client, since Vyte
    documents no maximum. With ``list_cancelled=False`` cancelled events are
    left out of every listing except ``filter=future``, although
    ``GET /v2/events/:id`` still returns them. With ``list_cancelled=True``
    they appear in every listing except ``filter=upcoming``.
    With ``bump_updated_at=False``
    edits leave ``updatedAt``, ``version``, ``__v`` and ``ics_sequence`` alone.
    All methods are thread-safe.
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        *,
        default_limit: int = 100,
        max_limit: int | None = None,
        list_cancelled: bool = False,
        bump_updated_at: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if default_limit < 1:
            raise ValueError(f"default_limit must be at least 1, got {default_limit}")
        if max_limit is not None and max_limit < 1:
            raise ValueError(f"max_limit must be at least 1, got {max_limit}")
        self.api_key = api_key
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.list_cancelled = list_cancelled
        self.bump_updated_at = bump_updated_at
        self.clock = clock
        self.users: dict[str, JsonObject] = {}
        self.events: dict[str, JsonObject] = {}
        self._hidden: set[str] = set()
        self._faults: deque[_Fault] = deque()
        self._lock = threading.RLock()

        now = format_timestamp(clock())
        self.organization: JsonObject = {
            "_id": new_object_id(at=clock()),
            "name": "Sandbox Organization",
            "plan": "pro",
            "admins": [],
            "members": [],
            "superadmin_team": new_object_id(at=clock()),
            "createdAt": now,
            "updatedAt": now,
        }

    # Organization and users

    def add_user(
        self, full_name: str, email: str, timezone: str = "Europe/Paris"
    ) -> str:
        """Add a member to the organization and return its user id.

        The first user added becomes the organization's admin and the default
        organizer of events created through ``POST /v2/events``.
        """
        load_zone(timezone)
        if "@" not in email:
            raise ValueError(f"invalid email address {email!r}")
        first_name, _, last_name = full_name.strip().partition(" ")
        with self._lock:
            if self._find_user(email=email) is not None:
                raise ValueError(f"a user with email {email!r} already exists")
            user_id = new_object_id(at=self.clock())
            self.users[user_id] = {
                "_id": user_id,
                "first_name": first_name,
                "last_name": last_name,
                "full_name": full_name,
                "timezone": timezone,
                "language": "en",
                "picture_url": "",
                "emails": [email],
            }
            self.organization["members"].append(user_id)
            if not self.organization["admins"]:
                self.organization["admins"].append(user_id)
            return user_id

    # Scenario methods: changes a Vyte user would make in the web app

    def add_event(self, event: JsonObject) -> str:
        """Store a deep copy of ``event`` and return its ``_id``."""
        event_id = event.get("_id")
        if not isinstance(event_id, str) or not is_object_id(event_id):
            raise ValueError(f"event _id {event_id!r} is not 24 lowercase hex digits")
        with self._lock:
            if event_id in self.events:
                raise ValueError(f"event {event_id!r} already exists")
            self.events[event_id] = copy.deepcopy(event)
        return event_id

    def reschedule(self, event_id: str, start: datetime, end: datetime) -> None:
        """Move the confirmed slot to ``start``-``end`` and keep the event confirmed.

        This models an edit and reconfirmation in Vyte's web app: it appends a
        new ``dates`` entry and points ``confirmed.date_id`` at it, keeping the
        old entry. Vyte does not document whether it edits the entry in place.
        """
        with self._lock:
            event = self._stored_event(event_id)
            confirmed = event.setdefault("confirmed", {})
            old_slot = _entry_by_id(event.get("dates", []), confirmed.get("date_id"))
            entry = new_date_entry(
                start,
                end,
                all_day=bool(old_slot and old_slot.get("all_day")),
                author_id=_author_id(event),
                now=self.clock(),
            )
            event.setdefault("dates", []).append(entry)
            self._mark_confirmed(event, entry["_id"], _default_place_id(event))
            self._touch(event, calendar_change=True)

    def unconfirm(self, event_id: str) -> None:
        """Leave the event unconfirmed, as while its host picks a new slot."""
        with self._lock:
            event = self._stored_event(event_id)
            confirmed = event.setdefault("confirmed", {})
            confirmed["flag"] = False
            confirmed["updated_at"] = None
            confirmed.pop("date_id", None)
            confirmed.pop("place_id", None)
            self._touch(event, calendar_change=True)

    def confirm(self, event_id: str, date_index: int = 0) -> None:
        """Confirm the event on ``dates[date_index]`` and its current or first place."""
        with self._lock:
            event = self._stored_event(event_id)
            dates = event.get("dates", [])
            if not 0 <= date_index < len(dates):
                raise IndexError(
                    f"date_index {date_index} is out of range for {len(dates)} dates"
                )
            date_id = dates[date_index]["_id"]
            self._mark_confirmed(event, date_id, _default_place_id(event))
            self._touch(event, calendar_change=True)

    def cancel(self, event_id: str) -> None:
        """Cancel the event by setting its top-level ``cancelled`` timestamp."""
        with self._lock:
            self._cancel(self._stored_event(event_id))

    def edit(self, event_id: str, **changes: Any) -> None:
        """Set top-level keys of the stored event, for example ``title``."""
        if "_id" in changes:
            raise ValueError("an event's _id cannot change")
        with self._lock:
            event = self._stored_event(event_id)
            event.update(copy.deepcopy(changes))
            self._touch(event, calendar_change=False)

    def remove(self, event_id: str) -> None:
        """Delete the event, so that ``GET /v2/events/:id`` returns 404."""
        with self._lock:
            self._stored_event(event_id)
            del self.events[event_id]
            self._hidden.discard(event_id)

    def hide(self, event_id: str) -> None:
        """Leave the event out of listings but keep it retrievable by id."""
        with self._lock:
            self._stored_event(event_id)
            self._hidden.add(event_id)

    def unhide(self, event_id: str) -> None:
        """Undo ``hide``."""
        with self._lock:
            self._stored_event(event_id)
            self._hidden.discard(event_id)

    # Fault injection

    def fail_next(self, status: int, count: int = 1) -> None:
        """Fail the next ``count`` requests with ``status`` without running them."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error (400-599), got {status}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._faults.extend([_Fault("status", status)] * count)

    def truncate_next(self) -> None:
        """Run the next request but cut its response body in half."""
        with self._lock:
            self._faults.append(_Fault("truncate"))

    def non_json_next(self) -> None:
        """Serve an HTML page with status 200 to the next request, without running it.

        A proxy or maintenance page in front of the API behaves this way.
        """
        with self._lock:
            self._faults.append(_Fault("html"))

    # HTTP

    def handle(self, request: Request) -> Response:
        """Route one HTTP request to its endpoint after applying the next fault."""
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                logger.debug(
                    "Vyte emulator injects {kind} fault into {method} {path}",
                    kind=fault.kind,
                    method=request.method,
                    path=request.path,
                )
            if fault is not None and fault.kind == "status":
                return _error(fault.status, f"injected failure {fault.status}")
            if fault is not None and fault.kind == "html":
                headers = {"Content-Type": "text/html; charset=utf-8"}
                return Response(200, _HTML_PAGE, headers)

            response = self._serve(request)
            if fault is not None:
                response.body = response.body[: len(response.body) // 2]
            return response

    def _serve(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except _ApiError as error:
            logger.debug(
                "Vyte emulator rejected {method} {path} with {status}: {message}",
                method=request.method,
                path=request.path,
                status=error.status,
                message=error.message,
            )
            return _error(error.status, error.message)
        except Exception:
            # An emulator bug returns 500 instead of dropping the connection.
            logger.exception(
                "Vyte emulator failed on {method} {path}",
                method=request.method,
                path=request.path,
            )
            return _error(500, "internal error in the Vyte emulator")

    def _dispatch(self, request: Request) -> Response:
        self._authenticate(request)
        parts = request.path.split("/")
        match [request.method, *parts]:
            case ["GET", "", "v2", "auth", "test"]:
                _check_query(request, frozenset())
                return Response.json(200, self.organization)
            case ["GET", "", "v2", "users"]:
                _check_query(request, frozenset())
                return Response.json(
                    200, [self._user_view(u) for u in self.users.values()]
                )
            case ["GET", "", "v2", "events"]:
                return Response.json(200, self._list_events(request))
            case ["POST", "", "v2", "events"]:
                return Response.json(200, self._create_event(request))
            case ["GET", "", "v2", "events", str(event_id)] if event_id:
                _check_query(request, frozenset())
                return Response.json(200, self._requested_event(event_id))
            case ["PUT", "", "v2", "events", str(event_id)] if event_id:
                return Response.json(200, self._update_event(request, event_id))
            case ["POST", "", "v2", "events", str(event_id), "confirm"]:
                return Response.json(200, self._confirm_event(request, event_id))
            case ["POST", "", "v2", "events", str(event_id), "cancel"]:
                _check_query(request, frozenset())
                self._cancel_event(event_id)
                return Response(
                    200, b"OK", {"Content-Type": "text/plain; charset=utf-8"}
                )
        # Strict: a trailing or doubled slash is not normalized, and a known
        # path with another method is 404 because Vyte lists no 405.
        raise _ApiError(404, f"no route for {request.method} {request.path}")

    def _authenticate(self, request: Request) -> None:
        key = request.headers.get("authorization")
        if key is None:
            raise _ApiError(401, "missing Authorization header with the API key")
        if key.startswith("Bearer "):
            # Strict: Vyte documents the raw key as the header value, so the
            # emulator rejects the common Bearer form instead of stripping it.
            raise _ApiError(401, "send the raw API key without a 'Bearer ' prefix")
        if key != self.api_key:
            raise _ApiError(401, "invalid API key in Authorization header")

    # GET /v2/events

    def _list_events(self, request: Request) -> list[JsonObject]:
        _check_query(request, LIST_PARAMETERS)
        limit = self._parse_limit(_single_arg(request, "limit"))
        predicates = self._list_predicates(request)
        visible = (
            event
            for event_id, event in self.events.items()
            if event_id not in self._hidden
        )
        matches = [e for e in visible if all(p(e) for p in predicates)]
        return matches[:limit]

    def _parse_limit(self, text: str | None) -> int:
        if text is None:
            limit = self.default_limit
        elif re.fullmatch(r"[0-9]+", text) and int(text) >= 1:
            limit = int(text)
        else:
            # Strict: 0 is rejected too, because MongoDB reads limit 0 as
            # "no limit" and a client should not depend on that.
            raise _ApiError(400, f"invalid limit {text!r}, expected a positive integer")
        if self.max_limit is not None:
            limit = min(limit, self.max_limit)
        return limit

    def _list_predicates(self, request: Request) -> list[EventPredicate]:
        status_filter = _single_arg(request, "filter")
        predicates = [self._status_predicate(status_filter)]
        if status_filter != "future" and not self.list_cancelled:
            predicates.append(lambda event: not event.get("cancelled"))

        pattern = _single_arg(request, "q")
        if pattern is not None:
            predicates.append(_title_predicate(pattern))
        predicates.extend(_creator_predicates(request))
        predicates.extend(_invitee_predicates(request))
        predicates.extend(_third_party_predicates(request))
        return predicates

    def _status_predicate(self, status_filter: str | None) -> EventPredicate:
        now = self.clock()
        match status_filter:
            case None:
                return lambda event: True
            case "confirmed":
                return _is_confirmed
            case "upcoming":
                # Strict: "upcoming" never lists cancelled events, even with
                # list_cancelled=True, because Vyte's draft docs describe
                # "future" as the filter that includes them.
                return lambda event: (
                    not event.get("cancelled") and _ends_after(event, now)
                )
            case "future":
                return lambda event: _ends_after(event, now)
        raise _ApiError(
            400,
            f"invalid filter {status_filter!r}, expected confirmed, upcoming or future",
        )

    # GET, PUT /v2/events/:id and actions

    def _requested_event(self, event_id: str) -> JsonObject:
        # Strict: a malformed id is a bad request, not a missing event.
        if not is_object_id(event_id):
            raise _ApiError(400, f"invalid event id {event_id!r}")
        event = self.events.get(event_id)
        if event is None:
            raise _ApiError(404, f"event {event_id!r} not found")
        return event

    def _writable_event(self, event_id: str) -> JsonObject:
        event = self._requested_event(event_id)
        # Strict: the docs do not say whether a cancelled event can change.
        if event.get("cancelled"):
            raise _ApiError(403, f"event {event_id!r} is cancelled")
        return event

    def _update_event(self, request: Request, event_id: str) -> JsonObject:
        _check_query(request, frozenset())
        body = _json_object(request, UPDATE_FIELDS)
        event = self._writable_event(event_id)
        now = self.clock()
        author_id = _author_id(event)
        title = _optional_string(body, "title")
        zone = _event_zone(event)
        dates = _parse_dates(body["dates"], zone) if "dates" in body else None
        places = _parse_places(body["places"]) if "places" in body else None

        if title is not None:
            event["title"] = title
        if dates is not None:
            event["dates"] = _date_entries(dates, author_id, now)
        if places is not None:
            event["places"] = _place_entries(places, author_id, now)
        replaced = dates is not None or places is not None
        if replaced:
            self._drop_stale_confirmation(event)
        self._touch(event, calendar_change=replaced)
        return event

    def _drop_stale_confirmation(self, event: JsonObject) -> None:
        # Strict: Vyte replaces dates and places on update, so a confirmation
        # that points at a replaced entry is cleared until the next confirm.
        confirmed = event.get("confirmed", {})
        if not confirmed.get("flag"):
            return
        date_id = confirmed.get("date_id")
        date_gone = _entry_by_id(event.get("dates", []), date_id) is None
        place_id = confirmed.get("place_id")
        place_gone = place_id is not None and (
            _entry_by_id(event.get("places", []), place_id) is None
        )
        if date_gone or place_gone:
            confirmed.update(flag=False, updated_at=None)
            confirmed.pop("date_id", None)
            confirmed.pop("place_id", None)

    def _confirm_event(self, request: Request, event_id: str) -> JsonObject:
        _check_query(request, frozenset({"d", "p"}))
        event = self._writable_event(event_id)
        date_id = _pick_entry_id(event.get("dates", []), _single_arg(request, "d"), "d")
        if date_id is None:
            raise _ApiError(400, f"event {event_id!r} has no dates to confirm")
        place_id = _pick_entry_id(
            event.get("places", []), _single_arg(request, "p"), "p"
        )
        self._mark_confirmed(event, date_id, place_id)
        self._touch(event, calendar_change=True)
        return event

    def _cancel_event(self, event_id: str) -> None:
        self._cancel(self._writable_event(event_id))

    # POST /v2/events

    def _create_event(self, request: Request) -> JsonObject:
        _check_query(request, frozenset())
        body = _json_object(request, CREATE_FIELDS)
        title = _optional_string(body, "title")
        if not title:
            raise _ApiError(400, "missing required field 'title'")
        organizer = self._organizer(body.get("created_by"))
        timezone = _optional_string(body, "timezone") or organizer["timezone"]
        try:
            zone = load_zone(timezone)
        except ValueError as error:
            raise _ApiError(400, str(error)) from error
        vyteme = _optional_bool(body, "vyteme", default=False)
        languages = (_language(body, "lang"), _language(body, "locale"))
        confirm = _wants_confirmed(body)

        event = build_event(
            host_email=organizer["emails"][0],
            host_name=organizer["full_name"],
            host_user_id=organizer["_id"],
            title=title,
            slots=[],
            invitees=[],
            timezone=timezone,
            confirmed_slot=None,
            vyteme=vyteme,
            now=self.clock(),
        )
        self._fill_created_event(event, body, zone)
        event["lang"], event["locale"] = languages
        if confirm:
            self._confirm_created_event(event)
        self.events[event["_id"]] = event
        return event

    def _fill_created_event(
        self, event: JsonObject, body: JsonObject, zone: ZoneInfo
    ) -> None:
        now = self.clock()
        organizer_id = event["created_by"]["user"]
        organizer_email = event["created_by"]["email"]
        dates = _parse_dates(body.get("dates", []), zone)
        event["dates"] = _date_entries(dates, organizer_id, now)
        places = _parse_places(body.get("places", []))
        event["places"] = _place_entries(places, organizer_id, now)
        for email, full_name, phone in _parse_invitees(body.get("invitees", [])):
            entry = new_invitee_entry(
                email=email,
                full_name=full_name,
                user_id=new_object_id(at=now),
                author_id=organizer_id,
                now=now,
                timezone=event["timezone"],
                voted=False,
                phone=phone,
            )
            event["invitees"].append(entry)
        event["messages"] = [
            new_message_entry(
                sender_email=organizer_email,
                sender_user_id=organizer_id,
                body=text,
                now=now,
            )
            for text in _parse_messages(body.get("messages", []))
        ]
        event["invitees_length"] = len(event["invitees"])
        event["api"] = True

    def _confirm_created_event(self, event: JsonObject) -> None:
        dates = event["dates"]
        places = event["places"]
        # Strict: a create request has no d or p, so the emulator confirms it
        # only when the slot and place are unambiguous.
        if len(dates) != 1 or len(places) > 1:
            raise _ApiError(
                400,
                "a confirmed event needs exactly one date and at most one place, "
                f"got {len(dates)} dates and {len(places)} places",
            )
        place_id = places[0]["_id"] if places else None
        self._mark_confirmed(event, dates[0]["_id"], place_id)

    def _organizer(self, created_by: Any) -> JsonObject:
        if created_by is None:
            if not self.users:
                raise _ApiError(400, "the organization has no user to organize events")
            return next(iter(self.users.values()))
        if not isinstance(created_by, dict):
            raise _ApiError(400, "'created_by' must be an object with email or user")
        user = self._find_user(
            email=created_by.get("email"), user_id=created_by.get("user")
        )
        if user is None:
            raise _ApiError(
                400, f"created_by {created_by!r} is not a user of this organization"
            )
        return user

    # Shared state changes

    def _stored_event(self, event_id: str) -> JsonObject:
        event = self.events.get(event_id)
        if event is None:
            raise KeyError(f"no event with id {event_id!r}")
        return event

    def _find_user(
        self, *, email: str | None = None, user_id: str | None = None
    ) -> JsonObject | None:
        for user in self.users.values():
            if user["_id"] == user_id or (
                email is not None and email in user["emails"]
            ):
                return user
        return None

    def _user_view(self, user: JsonObject) -> JsonObject:
        view = copy.deepcopy(user)
        view["account"] = {
            "organization": {
                "name": self.organization["name"],
                "id": self.organization["_id"],
                "admin": user["_id"] in self.organization["admins"],
            },
            "plan": self.organization["plan"],
        }
        return view

    def _mark_confirmed(
        self, event: JsonObject, date_id: str, place_id: str | None
    ) -> None:
        confirmed = event.setdefault("confirmed", {})
        confirmed["flag"] = True
        confirmed["updated_at"] = format_timestamp(self.clock())
        confirmed["date_id"] = date_id
        if place_id is None:
            confirmed.pop("place_id", None)
        else:
            confirmed["place_id"] = place_id

    def _cancel(self, event: JsonObject) -> None:
        stamp = format_timestamp(self.clock())
        event["cancelled"] = stamp
        event.setdefault("confirmed", {})["updated_at"] = stamp
        self._touch(event, calendar_change=True)

    def _touch(self, event: JsonObject, *, calendar_change: bool) -> None:
        """Bump the revision fields after an edit, unless bump_updated_at is off.

        ``ics_sequence`` only moves for changes that show in an attendee's
        calendar: time, place, confirmation and cancellation.
        """
        if not self.bump_updated_at:
            return
        event["updatedAt"] = format_timestamp(self.clock())
        event["version"] = event.get("version", 0) + 1
        event["__v"] = event.get("__v", 0) + 1
        if calendar_change:
            event["ics_sequence"] = event.get("ics_sequence", 0) + 1


# Request parsing


def _error(status: int, message: str) -> Response:
    return Response.json(status, {"error": message})


def _check_query(request: Request, allowed: frozenset[str]) -> None:
    # Strict: unknown query parameters are rejected instead of ignored, so a
    # client cannot believe that an undocumented filter such as
    # updated_since works.
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise _ApiError(400, f"unknown query parameters {unknown}")


def _single_arg(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise _ApiError(400, f"query parameter {name!r} is given {len(values)} times")
    return values[0]


def _id_list(request: Request, name: str) -> set[str] | None:
    """Split a comma-separated parameter into a set, or return None if absent."""
    text = _single_arg(request, name)
    if text is None:
        return None
    items = {item.strip() for item in text.split(",") if item.strip()}
    if not items:
        raise _ApiError(400, f"query parameter {name!r} is empty")
    return items


def _json_object(request: Request, allowed: frozenset[str]) -> JsonObject:
    try:
        body = request.json()
    except ValueError as error:
        raise _ApiError(400, f"request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise _ApiError(400, "request body must be a JSON object")
    # Strict: unknown fields are rejected instead of silently dropped.
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _ApiError(400, f"unknown fields {unknown}")
    return body


def _optional_string(body: JsonObject, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _ApiError(400, f"field {name!r} must be a string")
    return value


def _optional_bool(body: JsonObject, name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _ApiError(400, f"field {name!r} must be true or false")
    return value


def _language(body: JsonObject, name: str) -> str:
    value = _optional_string(body, name) or "en"
    if value not in LANGUAGES:
        raise _ApiError(
            400, f"invalid {name} {value!r}, expected one of {sorted(LANGUAGES)}"
        )
    return value


def _wants_confirmed(body: JsonObject) -> bool:
    confirmed = body.get("confirmed")
    if confirmed is None:
        return False
    if not isinstance(confirmed, dict) or set(confirmed) - {"flag"}:
        raise _ApiError(400, "'confirmed' must be an object with only 'flag'")
    return _optional_bool(confirmed, "flag", default=False)


def _object_items(
    value: Any, name: str, allowed: frozenset[str]
) -> Iterator[JsonObject]:
    if not isinstance(value, list):
        raise _ApiError(400, f"field {name!r} must be an array")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _ApiError(400, f"{name}[{index}] must be an object")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise _ApiError(400, f"{name}[{index}] has unknown fields {unknown}")
        yield item


def _required_string(item: JsonObject, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise _ApiError(400, f"{where}.{name} is required and must be a string")
    return value


def _parse_dates(value: Any, zone: ZoneInfo) -> list[tuple[datetime, datetime, bool]]:
    """Parse input ``dates`` into UTC (start, end, all_day) tuples."""
    allowed = frozenset({"date", "end_date", "all_day"})
    parsed = []
    for index, item in enumerate(_object_items(value, "dates", allowed)):
        where = f"dates[{index}]"
        try:
            start = parse_local_datetime(_required_string(item, "date", where), zone)
            end = parse_local_datetime(_required_string(item, "end_date", where), zone)
        except ValueError as error:
            raise _ApiError(400, f"{where}: {error}") from error
        if end < start:
            raise _ApiError(400, f"{where}: end_date is before date")
        all_day = _optional_bool(item, "all_day", default=False)
        parsed.append((start, end, all_day))
    return parsed


def _parse_places(value: Any) -> list[tuple[str, str | None]]:
    allowed = frozenset({"name", "address"})
    parsed = []
    for index, item in enumerate(_object_items(value, "places", allowed)):
        name = _required_string(item, "name", f"places[{index}]")
        parsed.append((name, _optional_string(item, "address")))
    return parsed


def _parse_invitees(value: Any) -> list[tuple[str, str | None, str | None]]:
    """Parse input ``invitees`` into (email, full_name, phone) tuples."""
    allowed = frozenset({"email", "full_name", "phone"})
    parsed = []
    for index, item in enumerate(_object_items(value, "invitees", allowed)):
        email = _required_string(item, "email", f"invitees[{index}]")
        full_name = _optional_string(item, "full_name")
        parsed.append((email, full_name, _optional_string(item, "phone")))
    return parsed


def _parse_messages(value: Any) -> list[str]:
    allowed = frozenset({"body"})
    return [
        _required_string(item, "body", f"messages[{index}]")
        for index, item in enumerate(_object_items(value, "messages", allowed))
    ]


# Event building and inspection


def _date_entries(
    dates: list[tuple[datetime, datetime, bool]], author_id: str, now: datetime
) -> list[JsonObject]:
    return [
        new_date_entry(start, end, all_day=all_day, author_id=author_id, now=now)
        for start, end, all_day in dates
    ]


def _place_entries(
    places: list[tuple[str, str | None]], author_id: str, now: datetime
) -> list[JsonObject]:
    return [
        new_place_entry(name, address, author_id=author_id, now=now)
        for name, address in places
    ]


def _entry_by_id(entries: Iterable[JsonObject], entry_id: Any) -> JsonObject | None:
    return next((e for e in entries if entry_id and e.get("_id") == entry_id), None)


def _pick_entry_id(
    entries: list[JsonObject], requested: str | None, parameter: str
) -> str | None:
    """Return the id to confirm from ``dates`` or ``places``.

    Strict: Vyte picks the entry with most votes when there are several and
    the parameter is absent. The emulator requires the parameter instead.
    """
    if requested is not None:
        if _entry_by_id(entries, requested) is None:
            raise _ApiError(400, f"{parameter}={requested!r} matches no entry")
        return requested
    if len(entries) > 1:
        raise _ApiError(
            400,
            f"missing query parameter {parameter!r}, required because the event "
            f"has {len(entries)} entries to choose from",
        )
    return str(entries[0]["_id"]) if entries else None


def _default_place_id(event: JsonObject) -> str | None:
    places = event.get("places", [])
    current = event.get("confirmed", {}).get("place_id")
    if _entry_by_id(places, current) is not None:
        return str(current)
    return str(places[0]["_id"]) if places else None


def _author_id(event: JsonObject) -> str:
    created_by = event.get("created_by", {})
    return str(created_by.get("user") or new_object_id())


def _event_zone(event: JsonObject) -> ZoneInfo:
    # NOTE: events added from Vyte's own samples may lack "timezone". Naive
    # input times for them are read as UTC, which Vyte may not do.
    try:
        return load_zone(event.get("timezone") or "UTC")
    except ValueError as error:
        raise _ApiError(500, str(error)) from error


def _is_confirmed(event: JsonObject) -> bool:
    return bool(event.get("confirmed", {}).get("flag"))


def _ends_after(event: JsonObject, now: datetime) -> bool:
    """Return whether the event has a slot that ends after ``now``.

    Strict: a confirmed event counts only its confirmed slot, because the
    other proposed slots are no longer on anyone's calendar.
    """
    dates = event.get("dates", [])
    if _is_confirmed(event):
        chosen = _entry_by_id(dates, event["confirmed"].get("date_id"))
        dates = [chosen] if chosen is not None else []
    return any(parse_timestamp(d["end_date"]) > now for d in dates)


def _title_predicate(pattern: str) -> EventPredicate:
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise _ApiError(
            400, f"invalid regular expression q={pattern!r}: {error}"
        ) from error
    return lambda event: regex.search(str(event.get("title", ""))) is not None


def _creator_predicates(request: Request) -> list[EventPredicate]:
    users = _id_list(request, "creator_users")
    emails = _id_list(request, "creator_emails")
    # Vyte documents creator_emails as ignored when creator_users is given.
    if users is not None:
        return [lambda event: event.get("created_by", {}).get("user") in users]
    if emails is not None:
        # Strict: emails compare exactly, with no case folding.
        return [lambda event: event.get("created_by", {}).get("email") in emails]
    return []


def _invitee_predicates(request: Request) -> list[EventPredicate]:
    users = _id_list(request, "invitee_users")
    emails = _id_list(request, "invitee_emails")
    if users is None and emails is None:
        return []

    # Vyte's reference allows both parameters in one query, although a label
    # on invitee_emails marks it as ignored with invitee_users. The emulator
    # matches an event when any invitee matches either list.
    def has_invitee(event: JsonObject) -> bool:
        return any(
            (users is not None and invitee.get("user") in users)
            or (emails is not None and invitee.get("email") in emails)
            for invitee in event.get("invitees", [])
        )

    return [has_invitee]


def _third_party_predicates(request: Request) -> list[EventPredicate]:
    predicates: list[EventPredicate] = []
    app_id = _single_arg(request, "app_id")
    if app_id is not None:
        predicates.append(
            lambda event: event.get("third_party", {}).get("app") == app_id
        )
    group_ids = _id_list(request, "group_ids")
    if group_ids is not None:
        predicates.append(
            lambda event: bool(
                group_ids & set(event.get("third_party", {}).get("group_ids", []))
            )
        )
    return predicates
