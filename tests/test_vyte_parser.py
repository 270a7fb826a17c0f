"""Normalizing raw Vyte events into bookings, skips, cancellations and errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookingsync.engine.mapping import (
    MESSAGE_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    activity_note,
    person_name,
    subject,
)
from bookingsync.models.booking import Booking
from bookingsync.sandbox.vyte_events import build_event
from bookingsync.settings import Settings, load_settings
from bookingsync.sources.base import Cancelled, Invalid, Skipped
from bookingsync.sources.vyte import EMAIL_PATTERN, VyteSource

VYTE_DOCS_DIR = (
    Path(__file__).resolve().parents[2] / "shared" / "real-input" / "vyte-docs"
)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
# Close to the slots of Vyte's reference samples, which are in July 2020.
SAMPLE_NOW = datetime(2020, 7, 16, 12, 0, tzinfo=UTC)
HOST_EMAIL = "sam.seller@oursales.example"
HOST_USER_ID = "5eecc40bb2181073ac6ff375"
BOOKER_EMAIL = "jane.roe@acme.example"
TRUNCATION_MARKER = "characters truncated]"

Event = dict[str, Any]
Outcome = Booking | Cancelled | Skipped | Invalid


def make_settings(**overrides: Any) -> Settings:
    return load_settings(
        None, vyte_api_key="k" * 8, pipedrive_api_token="t" * 8, **overrides
    )


def parse(raw: Any, now: datetime = NOW, **overrides: Any) -> Outcome:
    """Parse ``raw`` with ``VyteSource.parse`` at ``now`` and these settings."""
    source = VyteSource(make_settings(**overrides), now=lambda: now)
    try:
        return source.parse(raw)
    finally:
        source.close()


def parse_booking(raw: Any, now: datetime = NOW, **overrides: Any) -> Booking:
    outcome = parse(raw, now, **overrides)
    assert isinstance(outcome, Booking), outcome
    return outcome


def make_event(
    invitees: list[dict[str, str]] | None = None,
    *,
    start: datetime | None = None,
    minutes: int = 30,
    **options: Any,
) -> Event:
    """Build a confirmed booking-page event two days after ``NOW``."""
    start = start or NOW + timedelta(days=2)
    values: dict[str, Any] = {
        "host_email": HOST_EMAIL,
        "host_name": "Sam Seller",
        "host_user_id": HOST_USER_ID,
        "title": "Product demo",
        "slots": [(start, start + timedelta(minutes=minutes))],
        "invitees": invitees or [{"full_name": "Jane Roe", "email": BOOKER_EMAIL}],
        "now": NOW,
    }
    values.update(options)
    return build_event(**values)


def booker_entry(event: Event) -> dict[str, Any]:
    """Return the raw invitee entry of the booker (the host comes first)."""
    entry: dict[str, Any] = event["invitees"][1]
    return entry


def read_sample(name: str) -> Any:
    path = VYTE_DOCS_DIR / name
    if not path.is_file():
        pytest.skip(f"Vyte sample {path} is absent")
    return json.loads(path.read_text(encoding="utf-8"))


# Vyte's reference samples ---------------------------------------------------


def test_sample_event_object_without_id_is_invalid() -> None:
    """The reference's Event object sample has no _id, so it is reported."""
    outcome = parse(read_sample("event-object.json"), SAMPLE_NOW)

    assert isinstance(outcome, Invalid)
    assert outcome.booking_id is None
    assert "'Appointment about topic'" in outcome.problem


def test_sample_event_object_parses_into_booking() -> None:
    """The Event object sample, given the _id it leaves out, is a booking."""
    raw = read_sample("event-object.json")
    raw["_id"] = "5f4cc0d72285556ee2c63329"

    booking = parse_booking(raw, SAMPLE_NOW)

    assert booking.booking_id == "5f4cc0d72285556ee2c63329"
    assert booking.title == "Appointment about topic"
    assert [invitee.email for invitee in booking.invitees] == ["jean.dupont@domain.com"]
    assert booking.booker.name == "Person booking a slot name"
    assert booking.booker.phone == "0601020304"
    assert booking.start == datetime(2020, 7, 16, 7, 0, tzinfo=UTC)
    assert booking.end == datetime(2020, 7, 16, 8, 0, tzinfo=UTC)
    assert booking.all_day is False
    assert booking.timezone == "Europe/Paris"
    assert booking.message == "I\u2019m booking appointment about this"
    assert booking.location == "Place for the meeting."
    assert booking.location_url is None
    assert booking.host_email == "user.name@domain.com"


def test_sample_event_object_needs_lookback() -> None:
    """The sample's 2020 slot is synced from today only with a long lookback."""
    raw = read_sample("event-object.json")
    raw["_id"] = "5f4cc0d72285556ee2c63329"

    assert isinstance(parse(raw, NOW), Skipped)
    assert isinstance(parse(raw, NOW, lookback_days=100_000), Booking)


def test_sample_list_events_unconfirmed_skipped() -> None:
    """Both events of the list sample are unconfirmed, so neither is synced."""
    events = read_sample("list-events.json")

    outcomes = [parse(raw, SAMPLE_NOW, include_all_events=True) for raw in events]

    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Skipped)
        assert outcome.reason == "not confirmed"


def test_sample_list_events_skipped_without_vyteme() -> None:
    """The list sample's events carry no vyteme flag, so the default skips them."""
    events = read_sample("list-events.json")

    outcomes = [parse(raw, SAMPLE_NOW) for raw in events]

    for outcome in outcomes:
        assert isinstance(outcome, Skipped)
        assert "vyteme" in outcome.reason


def test_sample_create_event_skipped_as_unconfirmed() -> None:
    """The create-event sample is not confirmed yet."""
    raw = read_sample("create-event.json")

    outcome = parse(raw, SAMPLE_NOW, include_all_events=True)

    assert isinstance(outcome, Skipped)
    assert outcome.booking_id == "5f0d7eb02003d0971e2a961a"
    assert outcome.reason == "not confirmed"


@pytest.mark.parametrize("name", ["confirm-event.json", "update-event.json"])
def test_sample_organizer_only_event_skipped(name: str) -> None:
    """A confirmed sample whose only invitee is the organizer has no booker."""
    raw = read_sample(name)

    outcome = parse(raw, SAMPLE_NOW, include_all_events=True)

    assert isinstance(outcome, Skipped)
    assert "organizer" in outcome.reason


# Invalid events -------------------------------------------------------------


def test_parse_missing_id_invalid_names_title() -> None:
    """An event without _id is invalid, unidentified, and named by its title."""
    raw = make_event(title="Quarterly review")
    del raw["_id"]

    outcome = parse(raw)

    assert isinstance(outcome, Invalid)
    assert outcome.booking_id is None
    assert "'Quarterly review'" in outcome.problem
    assert "_id" in outcome.problem


def test_parse_non_object_event_invalid() -> None:
    """A listing entry that is not an object is invalid, not a crash."""
    outcome = parse(["not", "an", "event"])

    assert isinstance(outcome, Invalid)
    assert "list" in outcome.problem


def _set_booker_email(value: Any) -> Callable[[Event], None]:
    def mutate(raw: Event) -> None:
        booker_entry(raw)["email"] = value

    return mutate


def _drop_booker_email(raw: Event) -> None:
    del booker_entry(raw)["email"]


def _end_before_start(raw: Event) -> None:
    slot = raw["dates"][0]
    slot["end_date"] = "2026-03-04T11:00:00.000Z"
    slot["date"] = "2026-03-04T12:00:00.000Z"


def _unknown_date_id(raw: Event) -> None:
    raw["confirmed"]["date_id"] = "000000000000000000000abc"


def _set_slot(key: str, value: str) -> Callable[[Event], None]:
    def mutate(raw: Event) -> None:
        raw["dates"][0][key] = value

    return mutate


def _set(key: str, value: Any) -> Callable[[Event], None]:
    def mutate(raw: Event) -> None:
        raw[key] = value

    return mutate


def _bad_start(raw: Event) -> None:
    raw["dates"][0]["date"] = "next tuesday"


def _naive_start(raw: Event) -> None:
    raw["dates"][0]["date"] = "2026-03-04T12:00:00"


INVALID_CASES = [
    pytest.param(
        _set_booker_email("jane.roe-at-acme"), "'jane.roe-at-acme'", id="email-no-at"
    ),
    pytest.param(
        _set_booker_email("jane roe@acme.example"),
        "'jane roe@acme.example'",
        id="email-space",
    ),
    pytest.param(_set_booker_email(""), "''", id="email-empty"),
    pytest.param(_set_booker_email(42), "42", id="email-number"),
    pytest.param(_drop_booker_email, "None", id="email-missing"),
    pytest.param(_end_before_start, "before it starts", id="end-before-start"),
    pytest.param(
        _unknown_date_id, "'000000000000000000000abc'", id="date-id-unmatched"
    ),
    pytest.param(_bad_start, "'next tuesday'", id="start-not-iso"),
    pytest.param(_naive_start, "no UTC offset", id="start-without-offset"),
    pytest.param(
        _set_slot("date", "0001-01-01T00:30:00+01:00"),
        "'0001-01-01T00:30:00+01:00'",
        id="start-before-year-1-in-utc",
    ),
    pytest.param(
        _set_slot("end_date", "9999-12-31T23:30:00-01:00"),
        "'9999-12-31T23:30:00-01:00'",
        id="end-after-year-9999-in-utc",
    ),
    pytest.param(
        _set_slot("date", "0001-01-01T00:00:00.000Z"),
        "outside the years",
        id="start-in-year-1",
    ),
    pytest.param(
        _set("cancelled", "9999-12-31T23:00:00-05:00"),
        "cancelled",
        id="cancelled-after-year-9999",
    ),
    pytest.param(_set("dates", "2026-03-04T12:00:00Z"), "dates", id="dates-string"),
    pytest.param(_set("confirmed", "yes"), "confirmed", id="confirmed-string"),
    pytest.param(_set("title", 404), "title", id="title-number"),
    pytest.param(
        _set("invitees", {"email": BOOKER_EMAIL}), "invitees", id="invitees-object"
    ),
    pytest.param(_set("messages", "hello"), "messages", id="messages-string"),
    pytest.param(_set("places", 7), "places", id="places-number"),
    pytest.param(_set("created_by", "sam"), "created_by", id="created-by-string"),
    pytest.param(_set("timezone", ["Europe/Paris"]), "timezone", id="timezone-list"),
    pytest.param(_set("cancelled", 1700000000), "cancelled", id="cancelled-number"),
]


@pytest.mark.parametrize(("mutate", "expected"), INVALID_CASES)
def test_parse_invalid_event_names_problem(
    mutate: Callable[[Event], None], expected: str
) -> None:
    """An unreadable event is Invalid with its id and a problem naming the value."""
    raw = make_event()
    mutate(raw)

    outcome = parse(raw)

    assert isinstance(outcome, Invalid)
    assert outcome.booking_id == raw["_id"]
    assert expected in outcome.problem


def test_parse_invalid_second_email_ignored() -> None:
    """An invalid second invitee is dropped when another invitee is valid."""
    raw = make_event(
        [
            {"full_name": "Jane Roe", "email": BOOKER_EMAIL},
            {"full_name": "Broken", "email": "broken.example"},
        ]
    )

    booking = parse_booking(raw)

    assert [invitee.email for invitee in booking.invitees] == [BOOKER_EMAIL]


# Invitees -------------------------------------------------------------------


def test_parse_email_trimmed_and_lower_cased() -> None:
    """The booker's email is stored trimmed and in lower case."""
    raw = make_event([{"full_name": "Jane Roe", "email": "  Jane.ROE@Acme.Example \t"}])

    booking = parse_booking(raw)

    assert booking.booker.email == BOOKER_EMAIL


def test_parse_missing_name_becomes_none() -> None:
    """Without a name the invitee's name is None and Pipedrive gets the local part."""
    raw = make_event()
    del booker_entry(raw)["full_name"]

    booking = parse_booking(raw)

    assert booking.booker.name is None
    assert person_name(booking.booker) == "jane.roe"


def test_parse_blank_name_becomes_none() -> None:
    """A name of only spaces counts as no name."""
    raw = make_event([{"full_name": "   ", "email": BOOKER_EMAIL}])

    booking = parse_booking(raw)

    assert booking.booker.name is None


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Cher", id="single-word"),
        pytest.param("Zoë Ångström-Çelik de la Peña", id="accented-latin"),
        pytest.param("山田 太郎", id="cjk"),
        pytest.param("محمد عبد الله", id="arabic"),
        pytest.param("דוד בן-גוריון", id="hebrew"),
        pytest.param("Jane 🚀 Roe 👩🏽‍💻", id="emoji"),
    ],
)
def test_parse_name_kept_exactly(name: str) -> None:
    """Names in any script reach the booking and Pipedrive unchanged."""
    raw = make_event([{"full_name": name, "email": BOOKER_EMAIL}])

    booking = parse_booking(raw)

    assert booking.booker.name == name
    assert person_name(booking.booker) == name


def test_parse_lone_surrogate_replaced() -> None:
    """A lone surrogate from a JSON escape is replaced, so the booking encodes."""
    raw = make_event()
    booker_entry(raw)["full_name"] = json.loads('"Jane \\ud83d Roe"')

    booking = parse_booking(raw)

    assert booking.booker.name == "Jane \ufffd Roe"
    assert len(booking.fingerprint()) == 64


def test_parse_phone_and_company_read() -> None:
    """The booker's phone and company come from the invitee entry."""
    raw = make_event(
        [
            {
                "full_name": "Jane Roe",
                "email": BOOKER_EMAIL,
                "phone": " +33 6 01 02 03 04 ",
                "company": "ACME Corp",
            }
        ]
    )

    booking = parse_booking(raw)

    assert booking.booker.phone == "+33 6 01 02 03 04"
    assert booking.booker.company == "ACME Corp"


def test_parse_duplicate_invitee_kept_once() -> None:
    """The same email twice, in any case, gives one invitee: the first entry."""
    raw = make_event(
        [
            {"full_name": "Jane Roe", "email": BOOKER_EMAIL},
            {"full_name": "J. Roe", "email": "JANE.ROE@acme.example"},
        ]
    )

    booking = parse_booking(raw)

    assert len(booking.invitees) == 1
    assert booking.booker.name == "Jane Roe"


def test_parse_hundreds_of_invitees_kept_in_order() -> None:
    """Every invitee of a large event is kept, in order, with the booker first."""
    guests = [
        {"full_name": f"Guest {index}", "email": f"guest{index:03d}@acme.example"}
        for index in range(300)
    ]
    raw = make_event(guests)

    booking = parse_booking(raw)

    assert [invitee.email for invitee in booking.invitees] == [
        guest["email"] for guest in guests
    ]
    assert booking.booker.email == "guest000@acme.example"


def test_parse_internal_domain_invitee_excluded() -> None:
    """Colleagues from BOOKINGSYNC_INTERNAL_DOMAINS are not invitees."""
    raw = make_event(
        [
            {"full_name": "Pat Partner", "email": "pat@Partner.example"},
            {"full_name": "Jane Roe", "email": BOOKER_EMAIL},
        ]
    )

    booking = parse_booking(raw, internal_domains="PARTNER.example, other.example")

    assert [invitee.email for invitee in booking.invitees] == [BOOKER_EMAIL]


def test_parse_only_internal_invitees_skipped() -> None:
    """An event among colleagues only has no booker and is skipped."""
    raw = make_event([{"full_name": "Pat Partner", "email": "pat@partner.example"}])

    outcome = parse(raw, internal_domains="partner.example")

    assert isinstance(outcome, Skipped)
    assert "organizer" in outcome.reason


def test_parse_organizer_excluded_by_email() -> None:
    """An invitee with the creator's email, in any case, is the organizer."""
    raw = make_event(host_user_id=None)
    raw["invitees"].append({"email": " Sam.Seller@OurSales.example", "su": False})

    booking = parse_booking(raw)

    assert [invitee.email for invitee in booking.invitees] == [BOOKER_EMAIL]
    assert booking.host_email == HOST_EMAIL


def test_parse_organizer_excluded_by_user_id() -> None:
    """An invitee with the creator's user id is the organizer, whatever the email."""
    raw = make_event()
    raw["invitees"][0]["email"] = "sam.private@home.example"

    booking = parse_booking(raw)

    assert [invitee.email for invitee in booking.invitees] == [BOOKER_EMAIL]
    assert booking.host_user_id == HOST_USER_ID


# Slots ----------------------------------------------------------------------


def test_parse_slot_in_utc() -> None:
    """The confirmed slot's start and end are UTC-aware."""
    start = datetime(2026, 3, 4, 13, 30, tzinfo=UTC)
    raw = make_event(start=start, minutes=45)

    booking = parse_booking(raw)

    assert booking.start == start
    assert booking.end == start + timedelta(minutes=45)
    assert booking.start.tzinfo is UTC


def test_parse_confirmed_slot_chosen_among_proposals() -> None:
    """Of several proposed slots, the one confirmed.date_id names is booked."""
    first = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    second = datetime(2026, 3, 5, 15, 0, tzinfo=UTC)
    raw = make_event(
        slots=[
            (first, first + timedelta(hours=1)),
            (second, second + timedelta(hours=1)),
        ],
        confirmed_slot=1,
    )

    booking = parse_booking(raw)

    assert booking.start == second


def test_parse_zero_length_slot_booked() -> None:
    """A slot whose end equals its start is still a booking."""
    raw = make_event(minutes=0)

    booking = parse_booking(raw)

    assert booking.start == booking.end


def test_parse_missing_end_uses_start() -> None:
    """A slot without end_date ends when it starts."""
    raw = make_event()
    del raw["dates"][0]["end_date"]

    booking = parse_booking(raw)

    assert booking.end == booking.start


@pytest.mark.parametrize(
    ("start", "expected_date"),
    [
        # 2026-03-11 00:00 in Auckland (NZDT, UTC+13) is 11:00 UTC the day before.
        pytest.param(
            datetime(2026, 3, 10, 11, 0, tzinfo=UTC), "2026-03-11", id="local-midnight"
        ),
        pytest.param(
            datetime(2026, 3, 11, 0, 0, tzinfo=UTC), "2026-03-11", id="utc-midnight"
        ),
    ],
)
def test_parse_all_day_slot_local_date(start: datetime, expected_date: str) -> None:
    """An all-day slot in Auckland gets the calendar date shown there."""
    raw = make_event(
        start=start, minutes=24 * 60, all_day=True, timezone="Pacific/Auckland"
    )

    booking = parse_booking(raw)

    assert booking.all_day is True
    assert booking.local_date == expected_date


def test_parse_timed_slot_has_no_local_date() -> None:
    """Only all-day slots carry a local date."""
    booking = parse_booking(make_event())

    assert booking.all_day is False
    assert booking.local_date is None


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd"])
def test_parse_unknown_time_zone_falls_back_to_utc(zone: str) -> None:
    """An unknown time zone becomes UTC and the booking is still produced."""
    raw = make_event()
    raw["timezone"] = zone

    booking = parse_booking(raw)

    assert booking.timezone == "UTC"


def test_parse_missing_date_id_invalid() -> None:
    """A confirmed event without confirmed.date_id is invalid."""
    raw = make_event()
    del raw["confirmed"]["date_id"]

    outcome = parse(raw)

    assert isinstance(outcome, Invalid)
    assert "date_id" in outcome.problem


# Messages and titles --------------------------------------------------------


def test_parse_long_html_message_kept_and_escaped() -> None:
    """A huge message with markup is kept, then escaped and cut in the note."""
    message = (
        "<p>Hello</p><script>alert('x')</script>"
        + "x" * 70_000
        + "<script>end</script>"
    )
    raw = make_event(message=message)

    booking = parse_booking(raw)
    note = activity_note(booking, make_settings())

    assert booking.message == message
    assert "<script>" not in note
    assert "&lt;script&gt;" in note
    assert TRUNCATION_MARKER in note
    assert len(note) < MESSAGE_MAX_CHARS + 2_000


def test_parse_host_message_not_booker_message() -> None:
    """A message written by the host is not the booker's message."""
    raw = make_event(message="Looking forward to it", message_from=HOST_EMAIL)

    booking = parse_booking(raw)

    assert booking.message is None


def test_parse_long_title_subject_truncated() -> None:
    """A 400-character title gives a subject of at most 255 characters, marked."""
    raw = make_event(title="T" * 400)

    booking = parse_booking(raw)
    text = subject(booking, make_settings(), None)

    assert booking.title == "T" * 400
    assert len(text) <= SUBJECT_MAX_CHARS
    assert text.endswith(TRUNCATION_MARKER)


def test_parse_missing_title_untitled() -> None:
    """An event without a title gets a placeholder title."""
    raw = make_event()
    del raw["title"]

    booking = parse_booking(raw)

    assert booking.title == "(untitled)"


# Status and filters ---------------------------------------------------------


def test_parse_cancelled_event_cancelled() -> None:
    """An event with a cancelled timestamp is a cancellation."""
    raw = make_event()
    raw["cancelled"] = "2026-03-01T10:15:00.000Z"

    outcome = parse(raw)

    assert isinstance(outcome, Cancelled)
    assert outcome.booking_id == raw["_id"]
    assert outcome.cancelled_at == datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


def test_parse_cancelled_false_not_cancelled() -> None:
    """``cancelled: false`` means the event is not cancelled."""
    raw = make_event()
    raw["cancelled"] = False

    assert isinstance(parse(raw), Booking)


def test_parse_vyteme_false_skipped() -> None:
    """An event not booked through a booking page is skipped by default."""
    raw = make_event(vyteme=False)

    outcome = parse(raw)

    assert isinstance(outcome, Skipped)
    assert outcome.booking_id == raw["_id"]
    assert "BOOKINGSYNC_INCLUDE_ALL_EVENTS" in outcome.reason


def test_parse_vyteme_false_included_on_request() -> None:
    """BOOKINGSYNC_INCLUDE_ALL_EVENTS syncs events without vyteme."""
    raw = make_event(vyteme=False)

    assert isinstance(parse(raw, include_all_events=True), Booking)


def test_parse_unconfirmed_event_skipped() -> None:
    """An event with no confirmed slot is skipped."""
    outcome = parse(make_event(confirmed_slot=None))

    assert isinstance(outcome, Skipped)
    assert outcome.reason == "not confirmed"


def test_parse_event_before_lookback_skipped() -> None:
    """An event that ended before the lookback window is left alone."""
    raw = make_event(start=NOW - timedelta(days=31), minutes=60)

    outcome = parse(raw, lookback_days=30)

    assert isinstance(outcome, Skipped)
    assert "BOOKINGSYNC_LOOKBACK_DAYS" in outcome.reason


def test_parse_event_inside_lookback_booked() -> None:
    """An event that ended inside the lookback window is still synced."""
    raw = make_event(start=NOW - timedelta(days=29), minutes=60)

    assert isinstance(parse(raw, lookback_days=30), Booking)


# Places ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address", "location", "location_url"),
    [
        pytest.param(
            "Zoom",
            "https://zoom.example/j/123?pwd=a",
            "https://zoom.example/j/123?pwd=a",
            "https://zoom.example/j/123?pwd=a",
            id="url",
        ),
        pytest.param(
            "Office",
            "1 Rue de Rivoli, Paris",
            "Office, 1 Rue de Rivoli, Paris",
            None,
            id="office-address",
        ),
        pytest.param("Phone call", None, "Phone call", None, id="name-only"),
        pytest.param("Café", "Café", "Café", None, id="name-equals-address"),
    ],
)
def test_parse_place_location(
    name: str, address: str | None, location: str, location_url: str | None
) -> None:
    """The confirmed place becomes the location, and a URL the video link too."""
    raw = make_event(place_name=name, place_address=address)

    booking = parse_booking(raw)

    assert booking.location == location
    assert booking.location_url == location_url


def test_parse_no_place_no_location() -> None:
    """An event without a place has no location."""
    booking = parse_booking(make_event())

    assert booking.location is None
    assert booking.location_url is None


# Generated events -----------------------------------------------------------

TOP_LEVEL_KEYS = [
    "_id",
    "title",
    "timezone",
    "vyteme",
    "confirmed",
    "dates",
    "places",
    "invitees",
    "messages",
    "created_by",
    "cancelled",
]
INVITEE_KEYS = ["email", "full_name", "phone", "company", "user"]
# Text with every code point, including the lone surrogates that JSON escapes
# such as "\ud800" decode to.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_TEXT
)
# Converting these to UTC, or to a zone far from UTC, leaves datetime's range.
EDGE_TIMESTAMPS = st.sampled_from(
    [
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999Z",
    ]
)
ZONES = st.sampled_from(
    ["UTC", "Europe/Paris", "Pacific/Auckland", "Pacific/Kiritimati"]
)


@st.composite
def aware_datetimes(draw: st.DrawFn) -> datetime:
    """Draw an aware datetime over the full range, with a UTC offset up to 14 h."""
    naive = draw(st.datetimes())
    minutes = draw(st.integers(min_value=-14 * 60, max_value=14 * 60))
    return naive.replace(tzinfo=timezone(timedelta(minutes=minutes)))


@st.composite
def emails(draw: st.DrawFn) -> Any:
    """Draw valid, decorated (case, spaces) and broken email values."""
    valid = draw(st.emails())
    return draw(
        st.sampled_from(
            [valid, valid.upper(), f"  {valid}\t", valid.replace("@", ""), None]
        )
        | JSON_SCALARS
    )


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """Draw timestamps in Vyte's format, with offsets, without offsets, or junk."""
    moment = draw(aware_datetimes())
    naive = moment.replace(tzinfo=None)
    vyte_format = naive.isoformat(timespec="milliseconds") + "Z"
    return draw(
        st.sampled_from([vyte_format, moment.isoformat(), naive.isoformat()])
        | EDGE_TIMESTAMPS
        | JSON_SCALARS
    )


def sometimes(draw: st.DrawFn, strategy: st.SearchStrategy[Any], usual: Any) -> Any:
    """Return a value drawn from ``strategy`` one time in four, else ``usual``."""
    if draw(st.integers(min_value=0, max_value=3)) == 3:
        return draw(strategy)
    return usual


@st.composite
def vyte_events(draw: st.DrawFn) -> Any:
    """Draw a plausible event of Vyte's shape, with some values mangled or dropped.

    Most drawn events are valid bookings, so the checks on bookings run often.
    """
    guests = draw(
        st.lists(
            st.fixed_dictionaries({"full_name": ANY_TEXT, "email": st.emails()}),
            min_size=1,
            max_size=5,
        )
    )
    start = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.just(UTC),
        )
    )
    minutes = draw(st.integers(min_value=0, max_value=3 * 24 * 60))
    raw = build_event(
        host_email=HOST_EMAIL,
        host_name="Sam Seller",
        host_user_id=draw(st.sampled_from([HOST_USER_ID, None])),
        title=draw(ANY_TEXT),
        slots=[(start, start + timedelta(minutes=minutes))],
        invitees=guests,
        timezone=draw(ZONES),
        place_name=draw(st.none() | ANY_TEXT),
        message=draw(st.none() | ANY_TEXT),
        vyteme=sometimes(draw, st.booleans(), True),
        all_day=draw(st.booleans()),
        confirmed_slot=sometimes(draw, st.sampled_from([0, None]), 0),
        now=NOW,
    )

    for entry in raw["invitees"]:
        entry["email"] = sometimes(draw, emails(), entry["email"])
        entry["full_name"] = sometimes(draw, JSON_SCALARS, entry["full_name"])
        for key in sometimes(draw, st.sets(st.sampled_from(INVITEE_KEYS)), set()):
            entry.pop(key, None)
    slot = raw["dates"][0]
    slot["date"] = sometimes(draw, timestamps(), slot["date"])
    slot["end_date"] = sometimes(draw, timestamps(), slot["end_date"])
    raw["timezone"] = sometimes(draw, JSON_SCALARS, raw["timezone"])
    if draw(st.integers(min_value=0, max_value=7)) == 7:
        raw["cancelled"] = draw(timestamps())
    if draw(st.integers(min_value=0, max_value=7)) == 7:
        raw[draw(st.sampled_from(TOP_LEVEL_KEYS))] = draw(JSON_SCALARS)
    if draw(st.integers(min_value=0, max_value=7)) == 7:
        raw.pop(draw(st.sampled_from(TOP_LEVEL_KEYS)), None)
    return raw


GENERATED_SETTINGS = make_settings(lookback_days=10_000, include_all_events=False)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=vyte_events())
def test_parse_generated_events_never_raise(raw: Any) -> None:
    """Any event shape yields one of the four outcomes; bookings are consistent."""
    source = VyteSource(GENERATED_SETTINGS, now=lambda: NOW)
    try:
        outcome = source.parse(copy.deepcopy(raw))
        again = source.parse(copy.deepcopy(raw))
    finally:
        source.close()

    assert isinstance(outcome, Booking | Cancelled | Skipped | Invalid)
    if not isinstance(outcome, Booking):
        return
    assert isinstance(again, Booking)
    assert outcome.start <= outcome.end
    assert outcome.start.utcoffset() == timedelta(0)
    assert outcome.invitees
    for invitee in outcome.invitees:
        assert invitee.email == invitee.email.strip().lower()
        assert EMAIL_PATTERN.match(invitee.email)
    assert outcome.fingerprint() == again.fingerprint()
