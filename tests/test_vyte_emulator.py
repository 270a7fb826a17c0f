"""Tests of the Vyte v2 emulator over real HTTP on 127.0.0.1, and of its builder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import build_event, new_object_id

API_KEY = "sandbox-key"
NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-input" / "vyte-docs"

StartServer = Callable[[VyteEmulator], httpx.Client]


class FakeClock:
    """A clock that tests move forward by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def emulator(clock: FakeClock) -> VyteEmulator:
    return VyteEmulator(API_KEY, clock=clock)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Yield a function that serves an emulator and returns a client for it."""
    started: list[tuple[EmulatorServer, httpx.Client]] = []

    def start(app: VyteEmulator) -> httpx.Client:
        server = EmulatorServer(app).start()
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": API_KEY}, timeout=5
        )
        started.append((server, client))
        return client

    yield start
    for server, client in started:
        client.close()
        server.stop()


@pytest.fixture
def client(emulator: VyteEmulator, start_server: StartServer) -> httpx.Client:
    return start_server(emulator)


def make_event(
    *,
    title: str = "Demo ACME",
    start: datetime = NOW + timedelta(days=1),
    confirmed_slot: int | None = 0,
    host_user_id: str | None = None,
    host_email: str = "host@ourcompany.example",
    guest_email: str = "jane.roe@acme.example",
) -> dict[str, Any]:
    return build_event(
        host_email=host_email,
        host_name="Host Person",
        host_user_id=host_user_id or new_object_id(),
        title=title,
        slots=[(start, start + timedelta(minutes=30))],
        invitees=[{"full_name": "Jane Roe", "email": guest_email, "company": "ACME"}],
        place_name="Zoom",
        place_address="https://zoom.example/j/1",
        confirmed_slot=confirmed_slot,
        now=NOW - timedelta(days=1),
    )


def listed_ids(client: httpx.Client, **params: str) -> list[str]:
    response = client.get("/v2/events", params=params)
    assert response.status_code == 200
    return [event["_id"] for event in response.json()]


def confirmed_slot(event: dict[str, Any]) -> dict[str, Any]:
    date_id = event["confirmed"]["date_id"]
    return next(d for d in event["dates"] if d["_id"] == date_id)


# Authentication


def test_auth_missing_header_rejected(client: httpx.Client) -> None:
    """A request without Authorization is 401."""
    response = httpx.get(client.base_url.join("/v2/auth/test"), timeout=5)
    assert response.status_code == 401


def test_auth_bearer_prefix_rejected(client: httpx.Client) -> None:
    """A key sent with a Bearer prefix is 401."""
    response = client.get(
        "/v2/auth/test", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 401


def test_auth_wrong_key_rejected(client: httpx.Client) -> None:
    """A key other than the organization's is 401."""
    response = client.get("/v2/auth/test", headers={"Authorization": "other-key"})
    assert response.status_code == 401


def test_auth_test_returns_organization(client: httpx.Client) -> None:
    """The raw key gets the Organization object."""
    response = client.get("/v2/auth/test")
    expected = {
        "_id",
        "name",
        "plan",
        "admins",
        "members",
        "superadmin_team",
        "createdAt",
        "updatedAt",
    }
    assert response.status_code == 200
    assert set(response.json()) == expected


def test_auth_error_body_is_json(client: httpx.Client) -> None:
    """Errors carry a small JSON body with an error message."""
    response = client.get("/v2/auth/test", headers={"Authorization": "other-key"})
    assert isinstance(response.json()["error"], str)


# Users


def test_users_list_returns_bare_array(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """GET /v2/users returns every member as a User object."""
    first = emulator.add_user("Jean Dupont", "jean@ourcompany.example")
    second = emulator.add_user(
        "Ana Lima", "ana@ourcompany.example", "America/Sao_Paulo"
    )
    users = client.get("/v2/users").json()
    assert [u["_id"] for u in users] == [first, second]
    assert users[0]["first_name"] == "Jean"
    assert users[0]["last_name"] == "Dupont"
    assert users[0]["emails"] == ["jean@ourcompany.example"]
    assert users[1]["timezone"] == "America/Sao_Paulo"
    assert users[0]["account"]["organization"]["admin"] is True
    assert users[1]["account"]["organization"]["admin"] is False


def test_users_organization_id_matches(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Each user's account points at the organization from /v2/auth/test."""
    emulator.add_user("Jean Dupont", "jean@ourcompany.example")
    user = client.get("/v2/users").json()[0]
    assert user["account"]["organization"]["id"] == emulator.organization["_id"]


# Listing: limit and order


def test_list_events_keeps_insertion_order(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Events are listed in the order they were added."""
    ids = [emulator.add_event(make_event(title=f"Event {i}")) for i in range(4)]
    assert listed_ids(client) == ids


def test_list_events_limit_truncates(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """limit returns the first N events."""
    ids = [emulator.add_event(make_event(title=f"Event {i}")) for i in range(3)]
    assert listed_ids(client, limit="2") == ids[:2]


def test_list_events_default_limit_truncates(
    clock: FakeClock, start_server: StartServer
) -> None:
    """Without limit, default_limit applies."""
    emulator = VyteEmulator(API_KEY, default_limit=2, clock=clock)
    ids = [emulator.add_event(make_event(title=f"Event {i}")) for i in range(3)]
    client = start_server(emulator)
    assert listed_ids(client) == ids[:2]


def test_list_events_max_limit_truncates(
    clock: FakeClock, start_server: StartServer
) -> None:
    """max_limit caps a larger requested limit."""
    emulator = VyteEmulator(API_KEY, max_limit=2, clock=clock)
    ids = [emulator.add_event(make_event(title=f"Event {i}")) for i in range(3)]
    client = start_server(emulator)
    assert listed_ids(client, limit="10") == ids[:2]


@pytest.mark.parametrize("limit", ["abc", "-1", "0", "1.5", "", " 2"], ids=repr)
def test_list_events_invalid_limit_rejected(client: httpx.Client, limit: str) -> None:
    """A limit that is not a positive decimal integer is 400."""
    response = client.get("/v2/events", params={"limit": limit})
    assert response.status_code == 400


def test_list_events_unknown_parameter_rejected(client: httpx.Client) -> None:
    """Undocumented query parameters are 400, not silently ignored."""
    response = client.get("/v2/events", params={"updated_since": "2025-01-01"})
    assert response.status_code == 400


def test_list_events_returns_full_objects(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Listed events are the stored objects, not summaries."""
    event = make_event()
    emulator.add_event(event)
    assert client.get("/v2/events").json() == [event]


# Listing: creator and invitee filters


def test_list_events_creator_users_splits_commas(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """creator_users takes several comma-separated user ids."""
    users = [new_object_id() for _ in range(3)]
    ids = [emulator.add_event(make_event(host_user_id=u)) for u in users]
    listed = listed_ids(client, creator_users=f"{users[0]},{users[2]}")
    assert listed == [ids[0], ids[2]]


def test_list_events_creator_emails_filter(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """creator_emails matches created_by.email."""
    first = emulator.add_event(make_event(host_email="a@ourcompany.example"))
    emulator.add_event(make_event(host_email="b@ourcompany.example"))
    assert listed_ids(client, creator_emails="a@ourcompany.example") == [first]


def test_list_events_creator_emails_ignored_with_users(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """creator_emails is ignored when creator_users is present."""
    user = new_object_id()
    first = emulator.add_event(make_event(host_user_id=user))
    emulator.add_event(make_event(host_email="b@ourcompany.example"))
    listed = listed_ids(
        client, creator_users=user, creator_emails="b@ourcompany.example"
    )
    assert listed == [first]


def test_list_events_invitee_emails_filter(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """invitee_emails matches any invitee's email."""
    emulator.add_event(make_event(guest_email="x@acme.example"))
    second = emulator.add_event(make_event(guest_email="y@acme.example"))
    assert listed_ids(client, invitee_emails="y@acme.example") == [second]


def test_list_events_invitee_users_filter(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """invitee_users matches the host, who is listed among invitees."""
    user = new_object_id()
    first = emulator.add_event(make_event(host_user_id=user))
    emulator.add_event(make_event())
    assert listed_ids(client, invitee_users=user) == [first]


def test_list_events_q_matches_title_regex(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """q is a regular expression searched in the title."""
    first = emulator.add_event(make_event(title="Demo ACME"))
    emulator.add_event(make_event(title="Call Globex"))
    assert listed_ids(client, q="^Demo") == [first]


def test_list_events_invalid_regex_rejected(client: httpx.Client) -> None:
    """A q that is not a valid regular expression is 400."""
    response = client.get("/v2/events", params={"q": "(unclosed"})
    assert response.status_code == 400


# Listing: status filters and cancellation


@pytest.fixture
def status_mix(emulator: VyteEmulator) -> dict[str, str]:
    """Add one event per status case and return their ids by name."""
    cases = {
        "past_confirmed": make_event(start=NOW - timedelta(days=2)),
        "future_confirmed": make_event(),
        "future_unconfirmed": make_event(confirmed_slot=None),
        "future_cancelled": make_event(),
    }
    ids = {name: emulator.add_event(event) for name, event in cases.items()}
    emulator.cancel(ids["future_cancelled"])
    return ids


def test_list_events_filter_confirmed(
    status_mix: dict[str, str], client: httpx.Client
) -> None:
    """filter=confirmed lists confirmed events that are not cancelled."""
    expected = [status_mix["past_confirmed"], status_mix["future_confirmed"]]
    assert listed_ids(client, filter="confirmed") == expected


def test_list_events_filter_upcoming(
    status_mix: dict[str, str], client: httpx.Client
) -> None:
    """filter=upcoming lists future events, confirmed or not."""
    expected = [status_mix["future_confirmed"], status_mix["future_unconfirmed"]]
    assert listed_ids(client, filter="upcoming") == expected


def test_list_events_filter_future_includes_cancelled(
    status_mix: dict[str, str], client: httpx.Client
) -> None:
    """filter=future lists future events including cancelled ones."""
    expected = [
        status_mix["future_confirmed"],
        status_mix["future_unconfirmed"],
        status_mix["future_cancelled"],
    ]
    assert listed_ids(client, filter="future") == expected


def test_list_events_unknown_filter_rejected(client: httpx.Client) -> None:
    """An undocumented filter value is 400."""
    response = client.get("/v2/events", params={"filter": "cancelled"})
    assert response.status_code == 400


def test_list_events_upcoming_uses_confirmed_slot(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A confirmed past slot is not upcoming even if another proposal is future."""
    start = NOW - timedelta(days=1)
    event = build_event(
        host_email="host@ourcompany.example",
        host_name="Host Person",
        host_user_id=new_object_id(),
        title="Past booking",
        slots=[
            (start, start + timedelta(hours=1)),
            (NOW + timedelta(days=1), NOW + timedelta(days=1, hours=1)),
        ],
        invitees=[],
        confirmed_slot=0,
    )
    emulator.add_event(event)
    assert listed_ids(client, filter="upcoming") == []


def test_cancelled_event_excluded_from_list(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A cancelled event leaves the unfiltered listing."""
    active = emulator.add_event(make_event())
    cancelled = emulator.add_event(make_event())
    emulator.cancel(cancelled)
    assert listed_ids(client) == [active]


def test_cancelled_event_retrievable_by_id(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """GET by id still returns a cancelled event, with its cancelled timestamp."""
    event_id = emulator.add_event(make_event())
    emulator.cancel(event_id)
    response = client.get(f"/v2/events/{event_id}")
    assert response.status_code == 200
    assert response.json()["cancelled"] == "2025-06-02T09:00:00.000Z"
    assert response.json()["confirmed"]["updated_at"] == "2025-06-02T09:00:00.000Z"


def test_cancelled_event_listed_when_list_cancelled(
    clock: FakeClock, start_server: StartServer
) -> None:
    """With list_cancelled=True cancelled events stay in the listing."""
    emulator = VyteEmulator(API_KEY, list_cancelled=True, clock=clock)
    event_id = emulator.add_event(make_event())
    emulator.cancel(event_id)
    client = start_server(emulator)
    assert listed_ids(client) == [event_id]


def test_uncancelled_event_has_no_cancelled_key(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """The cancelled key appears only once an event is cancelled."""
    event_id = emulator.add_event(make_event())
    assert "cancelled" not in client.get(f"/v2/events/{event_id}").json()


# Retrieval, removal and hiding


def test_get_event_returns_bare_object(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """GET /v2/events/:id returns the stored event."""
    event = make_event()
    event_id = emulator.add_event(event)
    assert client.get(f"/v2/events/{event_id}").json() == event


def test_get_event_unknown_id_not_found(client: httpx.Client) -> None:
    """An unknown but well-formed id is 404."""
    response = client.get(f"/v2/events/{new_object_id()}")
    assert response.status_code == 404


def test_get_event_malformed_id_rejected(client: httpx.Client) -> None:
    """An id that is not 24 hex digits is 400."""
    response = client.get("/v2/events/not-an-id")
    assert response.status_code == 400


def test_get_event_trailing_slash_not_found(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Paths are matched exactly, so a trailing slash is 404."""
    event_id = emulator.add_event(make_event())
    response = client.get(f"/v2/events/{event_id}/")
    assert response.status_code == 404


def test_remove_event_returns_not_found(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A removed event is gone from GET by id and from listings."""
    event_id = emulator.add_event(make_event())
    emulator.remove(event_id)
    assert client.get(f"/v2/events/{event_id}").status_code == 404
    assert listed_ids(client) == []


def test_hide_event_keeps_retrieval(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A hidden event leaves listings but GET by id still returns it."""
    event_id = emulator.add_event(make_event())
    emulator.hide(event_id)
    assert listed_ids(client) == []
    assert client.get(f"/v2/events/{event_id}").status_code == 200


def test_unhide_event_restores_listing(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """unhide puts the event back in listings."""
    event_id = emulator.add_event(make_event())
    emulator.hide(event_id)
    emulator.unhide(event_id)
    assert listed_ids(client) == [event_id]


def test_scenario_unknown_event_raises(emulator: VyteEmulator) -> None:
    """Scenario methods raise KeyError for an unknown event id."""
    with pytest.raises(KeyError):
        emulator.cancel(new_object_id())


# Scenario edits


def test_reschedule_changes_confirmed_slot(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """reschedule points confirmed.date_id at a new slot with the new times."""
    event_id = emulator.add_event(make_event())
    old_date_id = emulator.events[event_id]["confirmed"]["date_id"]
    start = NOW + timedelta(days=3)
    emulator.reschedule(event_id, start, start + timedelta(hours=1))
    event = client.get(f"/v2/events/{event_id}").json()
    assert event["confirmed"]["flag"] is True
    assert event["confirmed"]["date_id"] != old_date_id
    assert confirmed_slot(event)["date"] == "2025-06-05T09:00:00.000Z"
    assert confirmed_slot(event)["end_date"] == "2025-06-05T10:00:00.000Z"
    assert len(event["dates"]) == 2


def test_reschedule_bumps_revision_fields(
    emulator: VyteEmulator, client: httpx.Client, clock: FakeClock
) -> None:
    """reschedule moves updatedAt and increments version, __v and ics_sequence."""
    event_id = emulator.add_event(make_event())
    before = client.get(f"/v2/events/{event_id}").json()
    clock.advance(timedelta(minutes=5))
    start = NOW + timedelta(days=3)
    emulator.reschedule(event_id, start, start + timedelta(hours=1))
    after = client.get(f"/v2/events/{event_id}").json()
    assert after["updatedAt"] == "2025-06-02T09:05:00.000Z"
    assert after["updatedAt"] != before["updatedAt"]
    assert after["version"] == before["version"] + 1
    assert after["__v"] == before["__v"] + 1
    assert after["ics_sequence"] == before["ics_sequence"] + 1


def test_reschedule_without_bump_keeps_updated_at(
    clock: FakeClock, start_server: StartServer
) -> None:
    """With bump_updated_at=False a reschedule leaves updatedAt alone."""
    emulator = VyteEmulator(API_KEY, bump_updated_at=False, clock=clock)
    event = make_event()
    event_id = emulator.add_event(event)
    clock.advance(timedelta(minutes=5))
    start = NOW + timedelta(days=3)
    emulator.reschedule(event_id, start, start + timedelta(hours=1))
    client = start_server(emulator)
    after = client.get(f"/v2/events/{event_id}").json()
    assert after["updatedAt"] == event["updatedAt"]
    assert after["version"] == event["version"]


def test_unconfirm_clears_date_and_place(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """unconfirm drops the flag, date_id and place_id."""
    event_id = emulator.add_event(make_event())
    emulator.unconfirm(event_id)
    confirmed = client.get(f"/v2/events/{event_id}").json()["confirmed"]
    assert confirmed["flag"] is False
    assert "date_id" not in confirmed
    assert "place_id" not in confirmed


def test_confirm_scenario_sets_slot(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """confirm points confirmed.date_id at the chosen proposed slot."""
    event = make_event(confirmed_slot=None)
    event_id = emulator.add_event(event)
    emulator.confirm(event_id, 0)
    confirmed = client.get(f"/v2/events/{event_id}").json()["confirmed"]
    assert confirmed["flag"] is True
    assert confirmed["date_id"] == event["dates"][0]["_id"]
    assert confirmed["place_id"] == event["places"][0]["_id"]


def test_edit_sets_top_level_keys(emulator: VyteEmulator, client: httpx.Client) -> None:
    """edit changes top-level keys such as the title."""
    event_id = emulator.add_event(make_event())
    emulator.edit(event_id, title="Demo ACME (moved)")
    assert client.get(f"/v2/events/{event_id}").json()["title"] == "Demo ACME (moved)"


# Create, update, confirm and cancel over HTTP

SAMPLE_CREATE_BODY = {
    "title": "First created event",
    "created_by": {"email": "creator@example.com"},
    "dates": [
        {
            "all_day": False,
            "date": "2020-07-16T09:00:00",
            "end_date": "2020-07-16T10:00:00",
        },
        {
            "all_day": False,
            "date": "2020-07-16T14:00:00+0100",
            "end_date": "2020-07-16T15:00:00",
        },
    ],
    "places": [{"name": "Place for the meeting."}],
}


def test_create_event_converts_naive_local_time(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Naive times are read in Europe/Paris and explicit offsets are kept."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    response = client.post("/v2/events", json=SAMPLE_CREATE_BODY)
    dates = response.json()["dates"]
    assert response.status_code == 200
    assert dates[0]["date"] == "2020-07-16T07:00:00.000Z"
    assert dates[0]["end_date"] == "2020-07-16T08:00:00.000Z"
    assert dates[1]["date"] == "2020-07-16T13:00:00.000Z"
    assert dates[1]["end_date"] == "2020-07-16T13:00:00.000Z"


def test_create_event_returns_unconfirmed_event(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A created event is unconfirmed, marked api, with the organizer invited."""
    user_id = emulator.add_user("Jean Dupont", "creator@example.com")
    event = client.post("/v2/events", json=SAMPLE_CREATE_BODY).json()
    assert event["confirmed"] == {"flag": False, "updated_at": None, "multi": False}
    assert event["api"] is True
    assert event["created_by"]["user"] == user_id
    assert event["invitees"][0]["su"] is True
    assert event["_id"] in emulator.events


def test_create_event_organizer_defaults_to_first_user(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Without created_by the organization's first user organizes the event."""
    first = emulator.add_user("Jean Dupont", "jean@ourcompany.example")
    emulator.add_user("Ana Lima", "ana@ourcompany.example")
    body = {
        "title": "Intro call",
        "invitees": [{"email": "jane.roe@acme.example", "full_name": "Jane Roe"}],
    }
    event = client.post("/v2/events", json=body).json()
    assert event["created_by"]["user"] == first
    assert event["invitees"][1]["email"] == "jane.roe@acme.example"
    assert event["invitees_length"] == 2


def test_create_event_confirmed_flag_confirms(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """confirmed.flag in the body confirms the only date and place."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    body = {
        "title": "Intro call",
        "dates": [{"date": "2025-06-10T10:00:00", "end_date": "2025-06-10T10:30:00"}],
        "places": [{"name": "Phone", "address": "+33 1 23 45 67 89"}],
        "confirmed": {"flag": True},
        "vyteme": True,
    }
    event = client.post("/v2/events", json=body).json()
    assert event["confirmed"]["flag"] is True
    assert event["confirmed"]["date_id"] == event["dates"][0]["_id"]
    assert event["confirmed"]["place_id"] == event["places"][0]["_id"]
    assert event["vyteme"] is True


def test_create_event_confirmed_needs_one_date(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A confirmed create with several dates is 400, since none is chosen."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    body = {**SAMPLE_CREATE_BODY, "confirmed": {"flag": True}}
    response = client.post("/v2/events", json=body)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"dates": []},
        {"title": "x", "color": "red"},
        {"title": "x", "dates": [{"date": "2020-07-16T09:00:00"}]},
        {"title": "x", "dates": [{"date": "not a date", "end_date": "x"}]},
        {"title": "x", "places": [{"address": "12 rue de Rivoli"}]},
        {"title": "x", "invitees": [{"full_name": "No Email"}]},
        {"title": "x", "created_by": {"email": "stranger@example.com"}},
    ],
    ids=[
        "no-title",
        "unknown-field",
        "no-end-date",
        "bad-date",
        "place-without-name",
        "invitee-without-email",
        "unknown-creator",
    ],
)
def test_create_event_invalid_body_rejected(
    emulator: VyteEmulator, client: httpx.Client, body: dict[str, Any]
) -> None:
    """An incomplete or unknown create body is 400."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    response = client.post("/v2/events", json=body)
    assert response.status_code == 400


def test_create_event_non_json_body_rejected(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A body that is not JSON is 400."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    response = client.post("/v2/events", content=b"title=x")
    assert response.status_code == 400


def test_update_event_changes_title(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """PUT with a title changes only the title and keeps the confirmation."""
    event_id = emulator.add_event(make_event())
    response = client.put(f"/v2/events/{event_id}", json={"title": "Renamed"})
    assert response.status_code == 200
    assert response.json()["title"] == "Renamed"
    assert response.json()["confirmed"]["flag"] is True


def test_update_event_replacing_dates_unconfirms(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """PUT replaces dates, so the old confirmed slot is no longer confirmed."""
    event_id = emulator.add_event(make_event())
    body = {
        "dates": [{"date": "2025-06-10T10:00:00", "end_date": "2025-06-10T11:00:00"}]
    }
    event = client.put(f"/v2/events/{event_id}", json=body).json()
    assert event["dates"][0]["date"] == "2025-06-10T08:00:00.000Z"
    assert len(event["dates"]) == 1
    assert event["confirmed"]["flag"] is False


def test_update_event_unknown_field_rejected(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """PUT accepts only title, dates and places."""
    event_id = emulator.add_event(make_event())
    response = client.put(f"/v2/events/{event_id}", json={"timezone": "UTC"})
    assert response.status_code == 400


def test_confirm_event_with_date_and_place(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """POST confirm with d and p confirms that slot and place."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    event = client.post("/v2/events", json=SAMPLE_CREATE_BODY).json()
    date_id = event["dates"][1]["_id"]
    place_id = event["places"][0]["_id"]
    response = client.post(
        f"/v2/events/{event['_id']}/confirm", params={"d": date_id, "p": place_id}
    )
    confirmed = response.json()["confirmed"]
    assert response.status_code == 200
    assert confirmed["flag"] is True
    assert confirmed["date_id"] == date_id
    assert confirmed["place_id"] == place_id
    assert confirmed["updated_at"] == "2025-06-02T09:00:00.000Z"


def test_confirm_event_needs_d_among_several_dates(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """Without d, an event with several dates cannot be confirmed."""
    emulator.add_user("Jean Dupont", "creator@example.com")
    event = client.post("/v2/events", json=SAMPLE_CREATE_BODY).json()
    response = client.post(f"/v2/events/{event['_id']}/confirm")
    assert response.status_code == 400


def test_confirm_event_unknown_date_rejected(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A d that names no date of the event is 400."""
    event_id = emulator.add_event(make_event(confirmed_slot=None))
    response = client.post(
        f"/v2/events/{event_id}/confirm", params={"d": new_object_id()}
    )
    assert response.status_code == 400


def test_cancel_event_returns_ok(emulator: VyteEmulator, client: httpx.Client) -> None:
    """POST cancel returns plain-text OK and marks the event cancelled."""
    event_id = emulator.add_event(make_event())
    response = client.post(f"/v2/events/{event_id}/cancel")
    assert response.status_code == 200
    assert response.text == "OK"
    assert "cancelled" in emulator.events[event_id]


def test_cancel_event_twice_forbidden(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A cancelled event cannot be cancelled, confirmed or updated again."""
    event_id = emulator.add_event(make_event())
    client.post(f"/v2/events/{event_id}/cancel")
    cancel = client.post(f"/v2/events/{event_id}/cancel")
    update = client.put(f"/v2/events/{event_id}", json={"title": "x"})
    assert cancel.status_code == 403
    assert update.status_code == 403


def test_unknown_route_not_found(client: httpx.Client) -> None:
    """An undocumented path or method is 404."""
    assert client.get("/v2/bookings").status_code == 404
    assert client.delete(f"/v2/events/{new_object_id()}").status_code == 404


def test_broken_stored_event_returns_server_error(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """An emulator failure on a request returns 500, not a dropped connection."""
    event_id = emulator.add_event(make_event())
    emulator.events[event_id]["dates"][0]["end_date"] = "not a timestamp"
    response = client.get("/v2/events", params={"filter": "upcoming"})
    assert response.status_code == 500


# Fault injection


def test_fail_next_answers_status_count_times(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """fail_next(503, 2) fails exactly the next two requests."""
    emulator.fail_next(503, count=2)
    statuses = [client.get("/v2/auth/test").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fail_next_skips_the_request(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """A failed request does not run, so a failed cancel changes nothing."""
    event_id = emulator.add_event(make_event())
    emulator.fail_next(500)
    response = client.post(f"/v2/events/{event_id}/cancel")
    assert response.status_code == 500
    assert "cancelled" not in emulator.events[event_id]


def test_fail_next_rejects_success_status(emulator: VyteEmulator) -> None:
    """Only error statuses can be injected."""
    with pytest.raises(ValueError):
        emulator.fail_next(200)


def test_truncate_next_breaks_json(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """truncate_next cuts one JSON body, then responses are whole again."""
    emulator.add_event(make_event())
    emulator.truncate_next()
    truncated = client.get("/v2/events")
    assert truncated.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    assert len(client.get("/v2/events").json()) == 1


def test_non_json_next_returns_html(
    emulator: VyteEmulator, client: httpx.Client
) -> None:
    """non_json_next serves one HTML page with status 200."""
    emulator.non_json_next()
    response = client.get("/v2/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert client.get("/v2/events").json() == []


# Event builder


def test_new_object_id_embeds_time() -> None:
    """An ObjectId is 24 hex digits whose first 8 encode the creation time."""
    object_id = new_object_id(at=NOW)
    assert len(object_id) == 24
    assert int(object_id, 16) >= 0
    assert int(object_id[:8], 16) == int(NOW.timestamp())


def test_new_object_id_unique() -> None:
    """Ids generated in the same second differ."""
    ids = {new_object_id(at=NOW) for _ in range(1000)}
    assert len(ids) == 1000


def test_build_event_timestamps_use_vyte_format() -> None:
    """Dates are UTC with milliseconds and a Z suffix."""
    event = make_event(start=datetime(2025, 6, 3, 10, 0, tzinfo=UTC))
    assert event["dates"][0]["date"] == "2025-06-03T10:00:00.000Z"
    assert event["createdAt"] == "2025-06-01T09:00:00.000Z"


def test_build_event_guest_carries_company() -> None:
    """The undocumented company key sits on the guest invitee."""
    event = make_event()
    guest = event["invitees"][1]
    assert guest["company"] == "ACME"
    assert guest["su"] is False
    assert event["invitees"][0]["su"] is True


def test_build_event_message_defaults_to_first_guest() -> None:
    """message_from defaults to the first invitee's email and user id."""
    event = build_event(
        host_email="host@ourcompany.example",
        host_name="Host Person",
        host_user_id=new_object_id(),
        title="Demo",
        slots=[(NOW, NOW + timedelta(minutes=30))],
        invitees=[{"full_name": "Jane Roe", "email": "jane.roe@acme.example"}],
        message="Interested in reporting.",
    )
    message = event["messages"][0]
    assert message["from"] == "jane.roe@acme.example"
    assert message["created_by"]["user"] == event["invitees"][1]["user"]
    assert message["body"] == "Interested in reporting."


def test_build_event_unconfirmed_shape() -> None:
    """confirmed_slot=None gives the unconfirmed block of Vyte's samples."""
    event = make_event(confirmed_slot=None)
    assert event["confirmed"] == {"flag": False, "updated_at": None, "multi": False}


@pytest.mark.parametrize(
    "changes",
    [
        {"slots": [(datetime(2025, 6, 3, 10), datetime(2025, 6, 3, 11))]},
        {"confirmed_slot": 1},
        {"invitees": [{"email": "no-name@acme.example"}]},
        {"invitees": [{"full_name": "A", "email": "a@b.example", "title": "CEO"}]},
        {"place_address": "12 rue de Rivoli"},
        {"timezone": "Mars/Olympus"},
        {"event_id": "evt-1"},
    ],
    ids=[
        "naive-slot",
        "slot-out-of-range",
        "invitee-without-name",
        "invitee-unknown-key",
        "address-without-name",
        "unknown-timezone",
        "malformed-id",
    ],
)
def test_build_event_invalid_arguments_rejected(changes: dict[str, Any]) -> None:
    """Inconsistent builder arguments raise ValueError."""
    arguments: dict[str, Any] = {
        "host_email": "host@ourcompany.example",
        "host_name": "Host Person",
        "host_user_id": None,
        "title": "Demo",
        "slots": [(NOW, NOW + timedelta(minutes=30))],
        "invitees": [],
    }
    arguments.update(changes)
    with pytest.raises(ValueError):
        build_event(**arguments)


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Return every key path in ``value``, with ``[]`` for list items."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


@pytest.mark.parametrize(
    ("unit", "extra_keys"),
    [
        ("event", {"timezone", "vyteme", "confirmed.multi"}),
        ("dates[0]", set()),
        ("places[0]", set()),
        ("invitees[0]", set()),
        ("confirmed", {"multi"}),
    ],
    ids=["event", "dates", "places", "invitees", "confirmed"],
)
def test_build_event_matches_sample_keys(unit: str, extra_keys: set[str]) -> None:
    """The builder's keys match Vyte's confirm sample, plus documented extras."""
    sample_path = SAMPLES / "confirm-event.json"
    if not sample_path.exists():
        pytest.skip(f"{sample_path} is not available")
    sample = json.loads(sample_path.read_text(encoding="utf-8"))
    # The sample keys key_store.hash by the host's user id, so reuse that id.
    built = build_event(
        host_email="creator@example.com",
        host_name="Jean Dupont",
        host_user_id=sample["created_by"]["user"],
        title="First created event",
        slots=[(NOW, NOW + timedelta(hours=1)), (NOW, NOW)],
        invitees=[],
        place_name="Place for the meeting.",
    )

    def select(event: dict[str, Any]) -> Any:
        if unit == "event":
            return event
        name, _, index = unit.partition("[")
        part = event[name]
        return part[int(index.rstrip("]"))] if index else part

    built_paths = key_paths(select(built))
    sample_paths = key_paths(select(sample))
    assert sample_paths - built_paths == set()
    assert built_paths - sample_paths == extra_keys
