"""Vyte v2 source: list events, normalize each into a ``Booking``.

Vyte has no "changed since" filter and no pagination, so every poll lists the
organization's events with an explicit ``limit`` and the engine diffs them
against the snapshot. A page that comes back full may be truncated; the
listing is then split per host with ``creator_users``.

The listing is decoded event by event as it arrives, and an event whose change
marker matches the snapshot is dropped at once. A poll therefore keeps about
one event in memory at a time, plus the events that changed, instead of the
whole body.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from loguru import logger

from bookingsync.errors import (
    InvalidBooking,
    NotFound,
    RateLimited,
    TransientError,
)
from bookingsync.http import (
    RETRY_AFTER_CAP_SECONDS,
    ApiClient,
    backoff_delay,
    build_timeout,
)
from bookingsync.logs import redactor
from bookingsync.models.booking import Booking, Invitee
from bookingsync.settings import Settings
from bookingsync.sources.base import Cancelled, Invalid, Listing, Skipped
from bookingsync.sources.jsonstream import NotAnArray, iter_array

SOURCE_NAME = "vyte"

# The booker's company is not in Vyte's documented Event object. Booking pages
# can ask for it, so read it from this invitee key when it is present.
INVITEE_COMPANY_KEY = "company"

EMAIL_PATTERN = re.compile(
    r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$"
)
URL_PATTERN = re.compile(r"^https?://\S+$", re.IGNORECASE)
# JSON escapes such as "\ud800" decode to lone surrogates, which cannot be
# encoded as UTF-8 for the database, the fingerprint or Pipedrive.
LONE_SURROGATE_PATTERN = re.compile("[\ud800-\udfff]")

# Every time-zone conversion of a time within these bounds stays inside the
# range of Python's datetime, so later code can convert slots freely.
EARLIEST_TIMESTAMP = datetime(2, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(9998, 12, 31, tzinfo=UTC)
CHANGE_MARKER_KEYS = ("updatedAt", "version", "__v", "ics_sequence")
# Bytes of the body kept to quote in the error about invalid JSON.
ERROR_SNIPPET_BYTES = 320

T = TypeVar("T")


class VyteClient(ApiClient):
    service = "Vyte"
    credential = "BOOKINGSYNC_VYTE_API_KEY"

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.BaseTransport | None = None
    ) -> VyteClient:
        timeout = build_timeout(
            settings.http_connect_timeout,
            settings.http_read_timeout,
            settings.http_write_timeout,
            settings.http_pool_timeout,
        )
        # Vyte expects the raw key in Authorization, without a "Bearer " prefix.
        headers = {
            "Authorization": settings.vyte_api_key.get_secret_value(),
            "Accept": "application/json",
            "User-Agent": "bookingsync",
        }
        return cls(
            settings.vyte_base_url,
            headers,
            timeout,
            transport=transport,
            proxy=settings.https_proxy,
            ca_bundle=settings.ca_bundle,
        )

    def get_array(
        self, path: str, params: Mapping[str, str], convert: Callable[[Any], T]
    ) -> list[T]:
        """GET a JSON array and return ``convert`` of each element.

        Elements are decoded and converted as the body arrives, so only the
        converted values stay in memory. Retries and errors are those of
        ``request`` for a GET. Raises ``NotAnArray`` when the body is valid
        JSON but not an array, with ``value`` None for an empty body.
        """
        # NOTE: this loop mirrors ApiClient.request, which always decodes the
        # whole body; keep the two in step until the base class can stream.
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._get_array_once(path, params, convert)
            except RateLimited as exc:
                if not self._should_retry(attempt, exc, retryable=True):
                    raise
                delay = min(exc.retry_after, RETRY_AFTER_CAP_SECONDS)
            except TransientError as exc:
                if not self._should_retry(attempt, exc, retryable=True):
                    raise
                delay = backoff_delay(attempt)
            self._sleep(delay)

    def _get_array_once(
        self, path: str, params: Mapping[str, str], convert: Callable[[Any], T]
    ) -> list[T]:
        method = "GET"
        self.before_request(method, path)
        try:
            with self._client.stream(method, path, params=params) as response:
                if not response.is_success:
                    response.read()
                    self.after_response(method, path, response)
                    raise self.translate_status(method, path, response)
                self.after_response(method, path, response)
                return self._convert_elements(path, response, convert)
        except httpx.TimeoutException as exc:
            raise TransientError(
                self.service, method, path, None, f"timed out ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(
                self.service, method, path, None, f"{type(exc).__name__}: {exc}"
            ) from None

    def _convert_elements(
        self, path: str, response: httpx.Response, convert: Callable[[Any], T]
    ) -> list[T]:
        head = bytearray()

        def chunks() -> Iterator[bytes]:
            for chunk in response.iter_bytes():
                if len(head) < ERROR_SNIPPET_BYTES:
                    head.extend(chunk[: ERROR_SNIPPET_BYTES - len(head)])
                yield chunk

        stream = chunks()
        first = next((chunk for chunk in stream if chunk), b"")
        if not first:
            raise NotAnArray(None)
        try:
            return [
                convert(item) for item in iter_array(itertools.chain([first], stream))
            ]
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = bytes(head).decode(response.encoding or "utf-8", errors="replace")
            snippet = redactor.redact(text)[:80].replace("\n", " ")
            raise TransientError(
                self.service,
                "GET",
                path,
                response.status_code,
                f"response is not valid JSON (starts with {snippet!r})",
            ) from None


def change_marker(raw: dict[str, Any]) -> str:
    """Return the cheap change hint of a raw event: its timestamps and counters."""
    parts = [raw.get(key) for key in CHANGE_MARKER_KEYS]
    return "|".join(["" if part is None else str(part) for part in parts])


class VyteSource:
    """Read bookings from Vyte's v2 API."""

    name = SOURCE_NAME

    def __init__(
        self,
        settings: Settings,
        client: VyteClient | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.client = client or VyteClient.from_settings(settings)
        self.now = now

    def close(self) -> None:
        self.client.close()

    def list_bookings(self, known_updates: dict[str, str | None]) -> Listing:
        entries, complete_hosts, complete = self._list_entries(known_updates)
        listing = Listing(complete=complete, complete_hosts=complete_hosts)
        for entry in entries:
            if entry.unchanged:
                listing.unchanged_ids.add(entry.key)
            else:
                _add_parsed(listing, self.parse(entry.raw))
        return listing

    def fetch_booking(
        self, booking_id: str
    ) -> Booking | Cancelled | Skipped | Invalid | None:
        try:
            raw = self.client.request("GET", f"/v2/events/{booking_id}")
        except NotFound:
            return None
        return self.parse(raw)

    def parse(self, raw: Any) -> Booking | Cancelled | Skipped | Invalid:
        """Normalize one raw event, or return why it is skipped or invalid."""
        raw = _replace_lone_surrogates(raw)
        event_id = raw.get("_id") if isinstance(raw, dict) else None
        try:
            return parse_event(raw, self.settings, self.now())
        except InvalidBooking as exc:
            return Invalid(exc.booking_id, exc.problem)
        except SkipEvent as exc:
            return Skipped(str(event_id), exc.reason)

    def _list_entries(
        self, known_updates: dict[str, str | None]
    ) -> tuple[list[_Entry], set[str] | None, bool]:
        """List the events, dropping the bodies of those whose marker is known.

        A full page is listed again per host. An event listed twice keeps the
        place of its first listing and the content of its last.
        """
        limit = self.settings.vyte_page_limit
        events = self._list_page({"limit": str(limit)}, known_updates)
        if len(events) < limit:
            return events, None, True

        logger.info(
            "Vyte returned a full page of {limit} events; listing per host", limit=limit
        )
        users = self.client.request("GET", "/v2/users")
        by_id = {e.key: e for e in events if e.has_key}
        complete_hosts: set[str] = set()
        for user in users if isinstance(users, list) else []:
            user_id = user.get("_id") if isinstance(user, dict) else None
            if not isinstance(user_id, str):
                continue
            params = {"limit": str(limit), "creator_users": user_id}
            page = self._list_page(params, known_updates)
            by_id.update((e.key, e) for e in page if e.has_key)
            if len(page) < limit:
                complete_hosts.add(user_id)
            else:
                logger.warning(
                    "Vyte listing for host {host} is still full at {limit} events; "
                    "events of this host are not checked for cancellation. Raise "
                    "BOOKINGSYNC_VYTE_PAGE_LIMIT",
                    host=user_id,
                    limit=limit,
                )
        return list(by_id.values()), complete_hosts, False

    def _list_page(
        self, params: dict[str, str], known_updates: dict[str, str | None]
    ) -> list[_Entry]:
        try:
            return self.client.get_array(
                "/v2/events", params, lambda raw: _Entry.of(raw, known_updates)
            )
        except NotAnArray as exc:
            raise InvalidBooking(
                None, f"GET /v2/events returned {type(exc.value).__name__}, not a list"
            ) from None


class _Entry(NamedTuple):
    """One listed event: its ``_id`` and, unless it is unchanged, its body.

    ``has_key`` is true for an object with an ``_id`` key, the kind of event
    that is merged across per-host listings.
    """

    key: Any
    has_key: bool
    unchanged: bool
    raw: Any

    @classmethod
    def of(cls, raw: Any, known_updates: dict[str, str | None]) -> _Entry:
        has_key = isinstance(raw, dict) and "_id" in raw
        event_id = raw["_id"] if has_key else None
        if (
            isinstance(event_id, str)
            and event_id in known_updates
            and known_updates[event_id] == change_marker(raw)
        ):
            return cls(event_id, True, True, None)
        return cls(event_id, has_key, False, raw)


def _add_parsed(
    listing: Listing, parsed: Booking | Cancelled | Skipped | Invalid
) -> None:
    if isinstance(parsed, Booking):
        listing.bookings.append(parsed)
    elif isinstance(parsed, Cancelled):
        listing.cancelled.append(parsed)
    elif isinstance(parsed, Skipped):
        listing.skipped.append(parsed)
    else:
        listing.invalid.append(parsed)


class SkipEvent(Exception):
    """An event that is deliberately not synced, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def parse_event(raw: Any, settings: Settings, now: datetime) -> Booking | Cancelled:
    """Normalize a raw Vyte event.

    Raises ``InvalidBooking`` for an event that cannot be read and
    ``SkipEvent`` for one that is deliberately not synced.
    """
    if not isinstance(raw, dict):
        raise InvalidBooking(None, f"event is a {type(raw).__name__}, not an object")
    raw = _replace_lone_surrogates(raw)
    event_id = raw.get("_id")
    if not isinstance(event_id, str) or not event_id.strip():
        title = raw.get("title")
        raise InvalidBooking(None, f"event titled {title!r} has no _id")
    parser = _EventParser(event_id, raw, settings, now)
    cancelled_at = parser.timestamp(raw.get("cancelled"), "cancelled")
    if cancelled_at is not None:
        return Cancelled(event_id, cancelled_at)
    return parser.booking()


class _EventParser:
    def __init__(
        self, event_id: str, raw: dict[str, Any], settings: Settings, now: datetime
    ) -> None:
        self.event_id = event_id
        self.raw = raw
        self.settings = settings
        self.now = now

    def fail(self, problem: str) -> InvalidBooking:
        return InvalidBooking(self.event_id, problem)

    def booking(self) -> Booking:
        if not self.settings.include_all_events and self.raw.get("vyteme") is not True:
            raise SkipEvent(
                "not booked through a booking page (vyteme is not true); "
                "set BOOKINGSYNC_INCLUDE_ALL_EVENTS=true to sync every event"
            )
        confirmed = self.mapping("confirmed")
        if confirmed.get("flag") is not True:
            raise SkipEvent("not confirmed")

        start, end, all_day = self.slot(confirmed)
        if self.now - end > timedelta(days=self.settings.lookback_days):
            raise SkipEvent(
                f"ended on {end:%Y-%m-%d}, before the lookback window of "
                f"{self.settings.lookback_days} days (BOOKINGSYNC_LOOKBACK_DAYS)"
            )
        host = self.mapping("created_by")
        host_email = normalize_email(host.get("email"))
        timezone = self.timezone()
        location, location_url = self.place(confirmed)
        title = self.text("title")
        return Booking(
            source=SOURCE_NAME,
            booking_id=self.event_id,
            title=title if title and title.strip() else "(untitled)",
            timezone=timezone,
            start=start,
            end=end,
            all_day=all_day,
            local_date=local_date(start, timezone) if all_day else None,
            location=location,
            location_url=location_url,
            host_email=host_email,
            host_name=_optional_text(host.get("full_name")),
            host_user_id=_optional_text(host.get("user")),
            invitees=self.invitees(host_email, _optional_text(host.get("user"))),
            message=self.booker_message(host_email),
            source_updated_at=change_marker(self.raw),
        )

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{key} is a {type(value).__name__}, expected an object")
        return value

    def items(self, key: str) -> list[dict[str, Any]]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{key} is a {type(value).__name__}, expected a list")
        return [item for item in value if isinstance(item, dict)]

    def text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{key} is a {type(value).__name__}, expected a string")
        return value

    def timestamp(self, value: Any, label: str) -> datetime | None:
        if value is None or value is False:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{label} {value!r} is not an ISO 8601 timestamp")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail(f"{label} {value!r} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise self.fail(f"{label} {value!r} has no UTC offset")
        try:
            utc = parsed.astimezone(UTC)
        except OverflowError:
            utc = None
        if utc is None or not EARLIEST_TIMESTAMP <= utc <= LATEST_TIMESTAMP:
            raise self.fail(f"{label} {value!r} is outside the years 2 to 9998")
        return utc

    def slot(self, confirmed: dict[str, Any]) -> tuple[datetime, datetime, bool]:
        date_id = confirmed.get("date_id")
        if not date_id:
            raise self.fail("is confirmed but has no confirmed.date_id")
        slot = next((d for d in self.items("dates") if d.get("_id") == date_id), None)
        if slot is None:
            raise self.fail(f"confirmed.date_id {date_id!r} matches no entry in dates")
        start = self.timestamp(slot.get("date"), "dates[].date")
        end = self.timestamp(slot.get("end_date"), "dates[].end_date") or start
        if start is None or end is None:
            raise self.fail(f"confirmed slot {date_id!r} has no start date")
        if end < start:
            raise self.fail(
                f"confirmed slot ends ({end.isoformat()}) before it starts "
                f"({start.isoformat()})"
            )
        return start, end, slot.get("all_day") is True

    def timezone(self) -> str:
        name = self.text("timezone") or "UTC"
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            logger.warning(
                "Event {booking_id} has unknown time zone {timezone!r}; using UTC",
                booking_id=self.event_id,
                timezone=name,
            )
            return "UTC"
        return name

    def place(self, confirmed: dict[str, Any]) -> tuple[str | None, str | None]:
        place_id = confirmed.get("place_id")
        place = next(
            (p for p in self.items("places") if place_id and p.get("_id") == place_id),
            None,
        )
        if place is None:
            return None, None
        name = _optional_text(place.get("name"))
        address = _optional_text(place.get("address"))
        if address and URL_PATTERN.match(address):
            return address, address
        if name and address and name != address:
            return f"{name}, {address}", None
        return address or name, None

    def invitees(
        self, host_email: str | None, host_user: str | None
    ) -> tuple[Invitee, ...]:
        internal = set(self.settings.internal_domains)
        found: dict[str, Invitee] = {}
        rejected: list[str] = []
        for item in self.items("invitees"):
            raw_email = item.get("email")
            email = normalize_email(raw_email)
            if (host_user and item.get("user") == host_user) or (
                email and email == host_email
            ):
                continue
            # NOTE: "su" is undocumented; Vyte's samples set it on the
            # organizer's own entry, so it identifies the organizer when
            # created_by carries neither email nor user.
            if item.get("su") is True and not (host_email or host_user):
                continue
            if email is None:
                rejected.append(repr(raw_email))
                continue
            if email.rsplit("@", 1)[1] in internal or email in found:
                continue
            found[email] = Invitee(
                email=email,
                name=_exact_name(item.get("full_name")),
                phone=_optional_text(item.get("phone")),
                company=_optional_text(item.get(INVITEE_COMPANY_KEY)),
            )
        if not found and rejected:
            raise self.fail(
                f"invitee email {rejected[0]} is missing or invalid; fix it in Vyte"
            )
        if not found:
            raise SkipEvent("has no invitee other than the organizer")
        if rejected:
            logger.warning(
                "Event {booking_id}: ignored invitees with invalid emails {emails}",
                booking_id=self.event_id,
                emails=", ".join(rejected),
            )
        return tuple(found.values())

    def booker_message(self, host_email: str | None) -> str | None:
        bodies = []
        for message in self.items("messages"):
            author = normalize_email(message.get("from"))
            body = message.get("body")
            if isinstance(body, str) and body.strip() and author != host_email:
                bodies.append(body.strip())
        return "\n\n".join(bodies) or None


def normalize_email(value: Any) -> str | None:
    """Return the trimmed, lower-cased email, or None when it is not valid."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if EMAIL_PATTERN.match(email) else None


def _replace_lone_surrogates(value: Any) -> Any:
    """Return a copy of a JSON value with lone surrogates replaced by U+FFFD."""
    if isinstance(value, str):
        return LONE_SURROGATE_PATTERN.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def _exact_name(value: Any) -> str | None:
    """Return a name exactly as given; Pipedrive derives first and last name."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def _optional_text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def local_date(start: datetime, timezone: str) -> str:
    """Return the calendar date of an all-day slot.

    NOTE: Vyte does not document how all-day slots are encoded. A start at
    exactly midnight UTC is read as a UTC date. Any other start is a local
    midnight, so it is converted to the event's time zone.
    """
    if (start.hour, start.minute, start.second) == (0, 0, 0):
        return start.date().isoformat()
    return start.astimezone(ZoneInfo(timezone)).date().isoformat()
