"""Tests of the Pipedrive API emulator, served over HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bookingsync.sandbox.pipedrive import PipedriveApiError, PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer

TOKEN = "test-token"
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

Started = tuple[PipedriveEmulator, httpx.Client]


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start(clock: FakeClock) -> Iterator[Callable[..., Started]]:
    """Return a function that serves a new emulator and returns it with a client."""
    with ExitStack() as stack:

        def start_emulator(**options: Any) -> Started:
            emulator = PipedriveEmulator(TOKEN, clock=clock, **options)
            server = stack.enter_context(EmulatorServer(emulator))
            client = httpx.Client(
                base_url=server.url,
                headers={"x-api-token": TOKEN},
                timeout=5,
                trust_env=False,  # never route loopback calls through a proxy
            )
            stack.enter_context(client)
            return emulator, client

        yield start_emulator


@pytest.fixture
def started(start: Callable[..., Started]) -> Started:
    return start()


@pytest.fixture
def emulator(started: Started) -> PipedriveEmulator:
    return started[0]


@pytest.fixture
def api(started: Started) -> httpx.Client:
    return started[1]


def create(api: httpx.Client, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/api/v2/{kind}", json=payload)
    if response.status_code != 200:
        pytest.fail(f"creating {kind} failed: {response.status_code} {response.text}")
    data: dict[str, Any] = response.json()["data"]
    return data


def create_person(
    api: httpx.Client, name: str = "Ada Lovelace", email: str = "ada@example.com"
) -> dict[str, Any]:
    return create(api, "persons", {"name": name, "emails": [{"value": email}]})


def search_person_ids(api: httpx.Client, **params: str) -> list[int]:
    response = api.get("/api/v2/persons/search", params=params)
    return [entry["item"]["id"] for entry in response.json()["data"]["items"]]


# --- Authentication ---------------------------------------------------------


def test_auth_missing_token_returns_401(api: httpx.Client) -> None:
    """A request without x-api-token is rejected with 401."""
    response = api.get("/api/v2/persons", headers={"x-api-token": ""})
    assert response.status_code == 401


def test_auth_wrong_token_returns_documented_body(api: httpx.Client) -> None:
    """A wrong token gets Pipedrive's 401 body."""
    response = api.get("/api/v2/persons", headers={"x-api-token": "wrong"})
    assert response.json() == {
        "success": False,
        "error": "unauthorized access",
        "errorCode": 401,
        "error_info": "Please check developers.pipedrive.com",
    }


def test_auth_query_token_accepted_on_v1(api: httpx.Client) -> None:
    """The legacy api_token query parameter works on v1 paths."""
    client = httpx.Client(base_url=str(api.base_url), trust_env=False, timeout=5)
    with client:
        response = client.get("/api/v1/users/me", params={"api_token": TOKEN})
    assert response.status_code == 200


def test_auth_query_token_rejected_on_v2(api: httpx.Client) -> None:
    """The api_token query parameter does not authenticate v2 requests."""
    client = httpx.Client(base_url=str(api.base_url), trust_env=False, timeout=5)
    with client:
        response = client.get("/api/v2/persons", params={"api_token": TOKEN})
    assert response.status_code == 401


# --- Persons ----------------------------------------------------------------


def test_person_create_derives_first_and_last_name(api: httpx.Client) -> None:
    """first_name is the first word of name and last_name the rest."""
    person = create_person(api, name="Ada King Lovelace")
    assert person["first_name"] == "Ada"
    assert person["last_name"] == "King Lovelace"


def test_person_create_defaults_email_label_and_primary(api: httpx.Client) -> None:
    """An email given only by value gets label work and becomes primary."""
    person = create_person(api)
    assert person["emails"] == [
        {"value": "ada@example.com", "primary": True, "label": "work"}
    ]


def test_person_create_returns_rfc3339_times(api: httpx.Client) -> None:
    """add_time and update_time are RFC 3339 UTC times ending in Z."""
    person = create_person(api)
    assert RFC3339_UTC.fullmatch(person["add_time"])
    assert RFC3339_UTC.fullmatch(person["update_time"])


def test_person_get_returns_created_person(api: httpx.Client) -> None:
    """GET by id returns the record that POST returned."""
    person = create_person(api)
    response = api.get(f"/api/v2/persons/{person['id']}")
    assert response.json() == {"success": True, "data": person}


def test_person_patch_changes_only_given_keys(api: httpx.Client) -> None:
    """PATCH changes the given fields and keeps the others."""
    person = create_person(api)
    response = api.patch(
        f"/api/v2/persons/{person['id']}", json={"name": "Augusta King"}
    )
    patched = response.json()["data"]
    assert patched["last_name"] == "King"
    assert patched["emails"] == person["emails"]


def test_person_delete_returns_id(api: httpx.Client) -> None:
    """DELETE returns the deleted id."""
    person = create_person(api)
    response = api.delete(f"/api/v2/persons/{person['id']}")
    assert response.json() == {"success": True, "data": {"id": person["id"]}}


def test_person_delete_is_soft(api: httpx.Client, emulator: PipedriveEmulator) -> None:
    """A deleted person stays in storage, marked is_deleted."""
    person = create_person(api)
    api.delete(f"/api/v2/persons/{person['id']}")
    assert emulator.persons[person["id"]]["is_deleted"] is True


def test_soft_delete_hides_from_get_list_and_search(api: httpx.Client) -> None:
    """A deleted person is gone from GET, list and search."""
    person = create_person(api)
    api.delete(f"/api/v2/persons/{person['id']}")
    assert api.get(f"/api/v2/persons/{person['id']}").status_code == 404
    assert api.get("/api/v2/persons").json()["data"] == []
    assert search_person_ids(api, term="ada@example.com") == []


def test_person_patch_of_deleted_returns_404(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """PATCH of a person deleted in the UI fails with 404."""
    person = create_person(api)
    emulator.ui_delete("persons", person["id"])
    response = api.patch(f"/api/v2/persons/{person['id']}", json={"name": "X Y"})
    assert response.status_code == 404


# --- Search -----------------------------------------------------------------


def test_person_search_exact_match_ignores_case(api: httpx.Client) -> None:
    """exact_match compares the whole value without regard to case."""
    person = create_person(api)
    found = search_person_ids(
        api, term="ADA@Example.com", fields="email", exact_match="true"
    )
    assert found == [person["id"]]


def test_person_search_exact_match_rejects_substring(api: httpx.Client) -> None:
    """exact_match does not match part of a value."""
    create_person(api)
    found = search_person_ids(api, term="ada@example", exact_match="true")
    assert found == []


def test_person_search_substring_without_exact_match(api: httpx.Client) -> None:
    """Without exact_match a case-insensitive substring matches."""
    person = create_person(api)
    create_person(api, name="Grace Hopper", email="grace@example.com")
    assert search_person_ids(api, term="LOVELACE") == [person["id"]]


def test_person_search_item_shape(api: httpx.Client) -> None:
    """Search items list emails and phones as plain strings."""
    create(
        api,
        "persons",
        {
            "name": "Ada Lovelace",
            "emails": [{"value": "ada@example.com"}],
            "phones": [{"value": "+44 20 7946 0000"}],
        },
    )
    response = api.get("/api/v2/persons/search", params={"term": "ada"})
    item = response.json()["data"]["items"][0]["item"]
    assert item["emails"] == ["ada@example.com"]
    assert item["phones"] == ["+44 20 7946 0000"]
    assert item["type"] == "person"


@pytest.mark.parametrize(
    ("term", "exact", "status"),
    [
        ("a", "false", 400),
        ("a", "true", 200),
        ("ab", "false", 200),
        (" ", "true", 400),
    ],
    ids=["one-char", "one-char-exact", "two-chars", "blank-exact"],
)
def test_person_search_term_minimum_length(
    api: httpx.Client, term: str, exact: str, status: int
) -> None:
    """Terms need 2 characters, or 1 with exact_match."""
    params = {"term": term, "exact_match": exact}
    response = api.get("/api/v2/persons/search", params=params)
    assert response.status_code == status


def test_person_search_filters_by_organization(api: httpx.Client) -> None:
    """organization_id limits person search to that organization."""
    org = create(api, "organizations", {"name": "Analytical Engines"})
    member = create(api, "persons", {"name": "Ada Lovelace", "org_id": org["id"]})
    create_person(api, name="Ada Other", email="other@example.com")
    found = search_person_ids(api, term="ada", organization_id=str(org["id"]))
    assert found == [member["id"]]


def test_search_index_lag_hides_new_person(
    start: Callable[..., Started], clock: FakeClock
) -> None:
    """A new person is not searchable until the index lag has passed."""
    _, api = start(search_index_lag_seconds=5)
    person = create_person(api)
    assert search_person_ids(api, term="ada@example.com") == []
    clock.advance(5)
    assert search_person_ids(api, term="ada@example.com") == [person["id"]]


def test_search_index_lag_shows_old_state_after_update(
    start: Callable[..., Started], clock: FakeClock
) -> None:
    """Within the lag after a rename, search still matches the old name."""
    _, api = start(search_index_lag_seconds=5)
    person = create_person(api)
    clock.advance(10)
    api.patch(f"/api/v2/persons/{person['id']}", json={"name": "Augusta King"})
    assert search_person_ids(api, term="Lovelace") == [person["id"]]
    assert search_person_ids(api, term="Augusta") == []
    clock.advance(5)
    assert search_person_ids(api, term="Augusta") == [person["id"]]


def test_organization_search_exact_name(api: httpx.Client) -> None:
    """Organization search finds an exact name in any case."""
    org = create(api, "organizations", {"name": "Analytical Engines Ltd"})
    params = {"term": "analytical engines ltd", "exact_match": "true"}
    response = api.get("/api/v2/organizations/search", params=params)
    assert response.json()["data"]["items"][0]["item"]["id"] == org["id"]


def test_deal_search_filters_by_status(api: httpx.Client) -> None:
    """Deal search honours the status filter."""
    create(api, "deals", {"title": "Intro call", "status": "won"})
    params = {"term": "intro", "status": "open"}
    response = api.get("/api/v2/deals/search", params=params)
    assert response.json()["data"]["items"] == []


def test_item_search_limits_item_types(api: httpx.Client) -> None:
    """itemSearch returns only the requested item types."""
    create(api, "organizations", {"name": "Ada Analytics"})
    create_person(api)
    params = {"term": "ada", "item_types": "organization"}
    response = api.get("/api/v2/itemSearch", params=params)
    types = [entry["item"]["type"] for entry in response.json()["data"]["items"]]
    assert types == ["organization"]


# --- Activities -------------------------------------------------------------


def test_activity_person_id_rejected(api: httpx.Client) -> None:
    """person_id in an activity body is a 400 that points to participants."""
    person = create_person(api)
    payload = {"subject": "Intro", "person_id": person["id"]}
    response = api.post("/api/v2/activities", json=payload)
    assert response.status_code == 400
    assert response.json()["code"] == "ERR_BAD_REQUEST"
    assert "participants" in response.json()["error"]


def test_activity_primary_participant_sets_person_id(api: httpx.Client) -> None:
    """The primary participant becomes the activity's person_id."""
    first = create_person(api)
    second = create_person(api, name="Grace Hopper", email="grace@example.com")
    participants = [
        {"person_id": first["id"], "primary": False},
        {"person_id": second["id"], "primary": True},
    ]
    activity = create(api, "activities", {"participants": participants})
    assert activity["person_id"] == second["id"]


def test_activity_first_participant_becomes_primary(api: httpx.Client) -> None:
    """With no primary participant, the first one is made primary."""
    person = create_person(api)
    payload = {"participants": [{"person_id": person["id"]}]}
    activity = create(api, "activities", payload)
    assert activity["participants"] == [{"person_id": person["id"], "primary": True}]
    assert activity["person_id"] == person["id"]


def test_activity_unknown_participant_rejected(api: httpx.Client) -> None:
    """A participant that does not exist is a 400."""
    payload = {"participants": [{"person_id": 999}]}
    response = api.post("/api/v2/activities", json=payload)
    assert response.status_code == 400


def test_activity_due_time_round_trip(api: httpx.Client) -> None:
    """due_time and duration sent as HH:MM come back as HH:MM:SS."""
    payload = {"due_date": "2025-07-14", "due_time": "08:00", "duration": "00:30"}
    activity = create(api, "activities", payload)
    fetched = api.get(f"/api/v2/activities/{activity['id']}").json()["data"]
    assert fetched["due_time"] == "08:00:00"
    assert fetched["duration"] == "00:30:00"


def test_activity_response_has_every_key(api: httpx.Client) -> None:
    """An activity shows unset documented keys as null."""
    activity = create(api, "activities", {"subject": "Intro"})
    assert activity["deal_id"] is None
    assert activity["conference_meeting_url"] is None
    assert activity["type"] == "task"


def test_activity_attendees_only_on_request(api: httpx.Client) -> None:
    """attendees appear only with include_fields=attendees."""
    attendees = [{"email": "ada@example.com", "name": "Ada"}]
    activity = create(api, "activities", {"attendees": attendees})
    path = f"/api/v2/activities/{activity['id']}"
    plain = api.get(path).json()["data"]
    detailed = api.get(path, params={"include_fields": "attendees"}).json()["data"]
    assert "attendees" not in plain
    assert detailed["attendees"][0]["email"] == "ada@example.com"
    assert detailed["attendees"][0]["is_organizer"] is False


def test_activity_done_sets_marked_as_done_time(api: httpx.Client) -> None:
    """Marking an activity done records when."""
    activity = create(api, "activities", {"subject": "Intro"})
    response = api.patch(f"/api/v2/activities/{activity['id']}", json={"done": True})
    assert RFC3339_UTC.fullmatch(response.json()["data"]["marked_as_done_time"])


def test_activity_list_filters_by_person(api: httpx.Client) -> None:
    """person_id on the activity list matches the primary participant."""
    person = create_person(api)
    create(api, "activities", {"subject": "Other"})
    payload = {"participants": [{"person_id": person["id"]}]}
    activity = create(api, "activities", payload)
    response = api.get("/api/v2/activities", params={"person_id": person["id"]})
    assert [a["id"] for a in response.json()["data"]] == [activity["id"]]


# --- Validation -------------------------------------------------------------

INVALID_BODIES = [
    pytest.param(
        "persons", {"name": "Ada", "org_id": "1"}, "org_id", id="int-as-string"
    ),
    pytest.param(
        "persons", {"name": "Ada", "visible_to": True}, "visible_to", id="bool-as-int"
    ),
    pytest.param("activities", {"done": 1}, "done", id="int-as-bool"),
    pytest.param(
        "persons", {"name": "Ada", "nickname": "A"}, "nickname", id="unknown-key"
    ),
    pytest.param("persons", {"name": "Ada", "id": 5}, "id", id="read-only-key"),
    pytest.param("persons", {"emails": []}, "name", id="missing-name"),
    pytest.param("deals", {"value": 10}, "title", id="missing-title"),
    pytest.param(
        "activities", {"location": "Berlin"}, "location", id="location-string"
    ),
    pytest.param("activities", {"type": "webinar"}, "type", id="unknown-type"),
    pytest.param("activities", {"due_date": "14.07.2025"}, "due_date", id="bad-date"),
    pytest.param("activities", {"due_time": "8am"}, "due_time", id="bad-time"),
    pytest.param("deals", {"title": "D", "org_id": 999}, "org_id", id="missing-org"),
]


@pytest.mark.parametrize(("kind", "payload", "named_field"), INVALID_BODIES)
def test_validation_rejects_invalid_body(
    api: httpx.Client, kind: str, payload: dict[str, Any], named_field: str
) -> None:
    """An invalid body is a 400 whose message names the field."""
    response = api.post(f"/api/v2/{kind}", json=payload)
    assert response.status_code == 400
    assert named_field in response.json()["error"]


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b""], ids=["text", "array", "empty"]
)
def test_validation_rejects_non_object_body(api: httpx.Client, body: bytes) -> None:
    """A body that is not a JSON object is a 400."""
    response = api.post("/api/v2/persons", content=body)
    assert response.status_code == 400


def test_validation_rejects_deleted_reference(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """A reference to a deleted organization is a 400."""
    org = create(api, "organizations", {"name": "Gone Ltd"})
    emulator.ui_delete("organizations", org["id"])
    payload = {"name": "Ada", "org_id": org["id"]}
    assert api.post("/api/v2/persons", json=payload).status_code == 400


def test_ui_create_applies_api_validation(emulator: PipedriveEmulator) -> None:
    """ui_create rejects what the API would reject."""
    with pytest.raises(PipedriveApiError, match="person_id"):
        emulator.ui_create("activities", {"person_id": 1})


# --- Lists and pagination ---------------------------------------------------


def test_list_cursor_pagination_three_pages(api: httpx.Client) -> None:
    """Following next_cursor walks every person once, then ends with null."""
    created = [create_person(api, name=f"Person {n}")["id"] for n in range(5)]
    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = api.get("/api/v2/persons", params=params).json()
        seen += [person["id"] for person in body["data"]]
        pages += 1
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            break
        params["cursor"] = cursor
    assert seen == created
    assert pages == 3


def test_list_limit_above_max_rejected(api: httpx.Client) -> None:
    """limit above 500 is a 400."""
    response = api.get("/api/v2/persons", params={"limit": 501})
    assert response.status_code == 400


def test_list_invalid_cursor_rejected(api: httpx.Client) -> None:
    """A cursor that was not issued by the emulator is a 400."""
    response = api.get("/api/v2/persons", params={"cursor": "bogus!"})
    assert response.status_code == 400


def test_list_unsupported_parameter_rejected(api: httpx.Client) -> None:
    """A query parameter the endpoint does not support is a 400."""
    response = api.get("/api/v2/persons", params={"filter_id": 3})
    assert response.status_code == 400


def test_deals_list_filters_by_org_and_status(api: httpx.Client) -> None:
    """Deal lists combine the org_id and status filters."""
    org = create(api, "organizations", {"name": "Analytical Engines"})
    expected_deal = create(api, "deals", {"title": "A", "org_id": org["id"]})
    create(api, "deals", {"title": "B", "org_id": org["id"], "status": "won"})
    create(api, "deals", {"title": "C"})
    params = {"org_id": org["id"], "status": "open"}
    response = api.get("/api/v2/deals", params=params)
    assert [deal["id"] for deal in response.json()["data"]] == [expected_deal["id"]]


def test_deals_list_status_deleted(api: httpx.Client) -> None:
    """status=deleted lists only deleted deals; no status hides them."""
    kept = create(api, "deals", {"title": "Kept"})
    deleted = create(api, "deals", {"title": "Deleted"})
    api.delete(f"/api/v2/deals/{deleted['id']}")
    default = api.get("/api/v2/deals").json()["data"]
    only_deleted = api.get("/api/v2/deals", params={"status": "deleted"}).json()["data"]
    assert [deal["id"] for deal in default] == [kept["id"]]
    assert [deal["id"] for deal in only_deleted] == [deleted["id"]]


def test_deal_stage_sets_pipeline(api: httpx.Client) -> None:
    """A deal created in a stage takes that stage's pipeline."""
    deal = create(api, "deals", {"title": "Intro", "stage_id": 3})
    assert deal["pipeline_id"] == 1
    assert deal["status"] == "open"


def test_deal_without_stage_gets_first_stage(api: httpx.Client) -> None:
    """A deal with no stage lands in the first stage of pipeline 1."""
    deal = create(api, "deals", {"title": "Intro"})
    assert deal["stage_id"] == 1


def test_deal_won_sets_close_times(api: httpx.Client) -> None:
    """Winning a deal stamps won_time and close_time."""
    deal = create(api, "deals", {"title": "Intro"})
    response = api.patch(f"/api/v2/deals/{deal['id']}", json={"status": "won"})
    won = response.json()["data"]
    assert won["won_time"] == won["close_time"]
    assert RFC3339_UTC.fullmatch(won["won_time"])


# --- Merge ------------------------------------------------------------------


def test_merge_ui_retires_source_person(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """After a merge, GET of the merged-away person is 404."""
    source = create_person(api)
    target = create_person(api, name="Ada L.", email="ada.l@example.org")
    emulator.ui_merge_persons(source["id"], target["id"])
    assert api.get(f"/api/v2/persons/{source['id']}").status_code == 404


def test_merge_ui_moves_activities_and_deals(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """Deals and activities of the merged person move to the survivor."""
    source = create_person(api)
    target = create_person(api, name="Ada L.", email="ada.l@example.org")
    deal = create(api, "deals", {"title": "Intro", "person_id": source["id"]})
    payload = {"participants": [{"person_id": source["id"]}]}
    activity = create(api, "activities", payload)
    emulator.ui_merge_persons(source["id"], target["id"])
    moved_deal = api.get(f"/api/v2/deals/{deal['id']}").json()["data"]
    moved_activity = api.get(f"/api/v2/activities/{activity['id']}").json()["data"]
    assert moved_deal["person_id"] == target["id"]
    assert moved_activity["person_id"] == target["id"]


def test_merge_ui_keeps_both_emails(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """The survivor gains the merged person's email as a secondary one."""
    source = create_person(api)
    target = create_person(api, name="Ada L.", email="ada.l@example.org")
    merged = emulator.ui_merge_persons(source["id"], target["id"])
    assert [entry["value"] for entry in merged["emails"]] == [
        "ada.l@example.org",
        "ada@example.com",
    ]


def test_merge_api_returns_survivor(api: httpx.Client) -> None:
    """PUT /v1/persons/{id}/merge returns the surviving person."""
    source = create_person(api)
    target = create_person(api, name="Ada L.", email="ada.l@example.org")
    response = api.put(
        f"/api/v1/persons/{source['id']}/merge",
        json={"merge_with_id": target["id"]},
    )
    assert response.json()["data"]["id"] == target["id"]


def test_merge_api_unknown_target_rejected(api: httpx.Client) -> None:
    """Merging into a person that does not exist is a 400 in the v1 envelope."""
    source = create_person(api)
    response = api.put(
        f"/api/v1/persons/{source['id']}/merge", json={"merge_with_id": 999}
    )
    assert response.status_code == 400
    assert response.json()["error_info"] == "Please check developers.pipedrive.com"


# --- Rate limits and token accounting ---------------------------------------


def test_burst_limit_rejects_with_headers(start: Callable[..., Started]) -> None:
    """The request over the burst limit gets 429 with limit headers."""
    _, api = start(burst_limit=2)
    api.get("/api/v1/users/me")
    api.get("/api/v1/users/me")
    response = api.get("/api/v1/users/me")
    assert response.status_code == 429
    assert response.json()["error"] == "Request over limit"
    assert response.headers["x-ratelimit-limit"] == "2"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-reset"] == "2"
    assert response.headers["retry-after"] == "2"


def test_burst_limit_counts_down_remaining(start: Callable[..., Started]) -> None:
    """x-ratelimit-remaining counts the requests left in the window."""
    _, api = start(burst_limit=3)
    response = api.get("/api/v1/users/me")
    assert response.headers["x-ratelimit-remaining"] == "2"


def test_burst_limit_recovers_after_window(
    start: Callable[..., Started], clock: FakeClock
) -> None:
    """Requests pass again once the rolling 2 s window has moved on."""
    _, api = start(burst_limit=1)
    api.get("/api/v1/users/me")
    clock.advance(1.5)
    assert api.get("/api/v1/users/me").status_code == 429
    clock.advance(0.5)
    assert api.get("/api/v1/users/me").status_code == 200


def test_daily_budget_rejects_when_spent(start: Callable[..., Started]) -> None:
    """A request costing more than the tokens left is a 429 until midnight."""
    late_evening = datetime(2025, 7, 14, 23, 59, 0, tzinfo=UTC)
    _, api = start(daily_token_budget=10, utc_now=lambda: late_evening)
    first = api.get("/api/v2/persons")
    response = api.get("/api/v2/persons/1")
    assert first.headers["x-daily-ratelimit-token-remaining"] == "0"
    assert response.status_code == 429
    assert response.headers["x-daily-ratelimit-token-remaining"] == "0"
    assert response.headers["x-daily-ratelimit-token-limit"] == "10"
    assert response.headers["retry-after"] == "60"


def test_daily_budget_reset_allows_requests(start: Callable[..., Started]) -> None:
    """reset_daily_budget refills the budget."""
    emulator, api = start(daily_token_budget=10)
    api.get("/api/v2/persons")
    emulator.reset_daily_budget()
    assert api.get("/api/v2/persons").status_code == 200


def test_tokens_charged_per_endpoint(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """Each endpoint charges its documented token cost."""
    person = create_person(api)
    path = f"/api/v2/persons/{person['id']}"
    api.get(path)
    api.get("/api/v2/persons")
    api.patch(path, json={"name": "Ada King"})
    api.get("/api/v2/persons/search", params={"term": "ada"})
    api.get("/api/v2/stages")
    api.delete(path)
    costs = [cost for _, _, cost in emulator.request_costs]
    assert costs == [5, 1, 10, 5, 20, 5, 3]
    assert emulator.tokens_spent == 49


def test_tokens_rejected_requests_cost_nothing(
    start: Callable[..., Started],
) -> None:
    """401 and 429 responses charge no tokens."""
    emulator, api = start(burst_limit=1)
    api.get("/api/v2/persons", headers={"x-api-token": "wrong"})
    api.get("/api/v2/persons")
    api.get("/api/v2/persons")
    assert emulator.tokens_spent == 10


# --- Routing, v1 endpoints and concurrency ----------------------------------


def test_unknown_path_returns_404(api: httpx.Client) -> None:
    """An unknown path is a JSON 404."""
    response = api.get("/api/v2/widgets")
    assert response.status_code == 404
    assert response.json()["success"] is False


def test_wrong_method_returns_405(api: httpx.Client) -> None:
    """A known path with the wrong method is a 405."""
    assert api.put("/api/v2/persons", json={}).status_code == 405


def test_users_me_returns_company_domain(api: httpx.Client) -> None:
    """users/me names the token's user and the company domain."""
    me = api.get("/api/v1/users/me").json()["data"]
    assert me["id"] == 1
    assert me["company_domain"] == "sandbox"


def test_users_list_includes_added_user(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """A user added with add_user is listed and can own records."""
    user_id = emulator.add_user("Grace Hopper", "grace@sandbox.example")
    users = api.get("/api/v1/users").json()["data"]
    deal = create(api, "deals", {"title": "Intro", "owner_id": user_id})
    assert [user["id"] for user in users] == [1, user_id]
    assert deal["owner_id"] == user_id


def test_activity_types_are_seeded(api: httpx.Client) -> None:
    """The default activity types are listed by key_string."""
    types = api.get("/api/v1/activityTypes").json()["data"]
    keys = [activity_type["key_string"] for activity_type in types]
    assert keys == ["call", "meeting", "task", "deadline", "email", "lunch"]


def test_stages_filter_by_pipeline(api: httpx.Client) -> None:
    """Stages of pipeline 1 are the three seeded ones."""
    response = api.get("/api/v2/stages", params={"pipeline_id": 1})
    names = [stage["name"] for stage in response.json()["data"]]
    assert names == ["Qualified", "Contact made", "Demo scheduled"]


def test_live_returns_only_undeleted(emulator: PipedriveEmulator) -> None:
    """live() skips soft-deleted records."""
    remaining = emulator.ui_create_person("Ada Lovelace", "ada@example.com")
    deleted = emulator.ui_create_person("Grace Hopper")
    emulator.ui_delete("persons", deleted["id"])
    assert [person["id"] for person in emulator.live("persons")] == [remaining["id"]]


def test_concurrent_creates_get_distinct_ids(
    api: httpx.Client, emulator: PipedriveEmulator
) -> None:
    """Persons created from several threads at once get distinct ids."""
    url = str(api.base_url)

    def create_some() -> None:
        with httpx.Client(
            base_url=url, headers={"x-api-token": TOKEN}, trust_env=False, timeout=5
        ) as client:
            for n in range(10):
                client.post("/api/v2/persons", json={"name": f"Person {n}"})

    threads = [threading.Thread(target=create_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(emulator.persons) == list(range(1, 41))
