"""End-to-end: the real sync code against the Vyte and Pipedrive emulators."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bookingsync.app import App
from bookingsync.engine.mapping import MARKER_PREFIX
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from tests.conftest import in_days

AddBooking = Callable[..., dict[str, Any]]


def write_paths(server: EmulatorServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.writes()]


def test_new_booking_creates_one_of_each(
    app: App,
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
    pipedrive_host_id: int,
) -> None:
    """A company booker gets one organization, person, deal and activity."""
    start = in_days(2, hour=13, minute=30)
    add_booking(
        [
            {
                "full_name": "Jane Roe",
                "email": "Jane.Roe@acme.example ",
                "phone": "+33601020304",
                "company": "ACME Corp",
            }
        ],
        start=start,
        minutes=45,
        place_name="Zoom",
        place_address="https://zoom.example/j/123",
        message="Please show the <b>reporting</b> module",
    )

    report = app.sync()

    assert report.ok
    orgs = pipedrive_emulator.live("organizations")
    persons = pipedrive_emulator.live("persons")
    deals = pipedrive_emulator.live("deals")
    activities = pipedrive_emulator.live("activities")
    assert [o["name"] for o in orgs] == ["ACME Corp"]
    assert [p["name"] for p in persons] == ["Jane Roe"]
    assert persons[0]["emails"][0]["value"] == "jane.roe@acme.example"
    assert persons[0]["phones"][0]["value"] == "+33601020304"
    assert persons[0]["org_id"] == orgs[0]["id"]
    assert [d["title"] for d in deals] == ["ACME Corp"]
    assert deals[0]["org_id"] == orgs[0]["id"]
    assert deals[0]["person_id"] == persons[0]["id"]
    assert len(activities) == 1
    activity = activities[0]
    assert activity["type"] == "meeting"
    assert activity["subject"] == "Product demo"
    assert activity["due_date"] == start.strftime("%Y-%m-%d")
    assert activity["due_time"] == "13:30:00"
    assert activity["duration"] == "00:45:00"
    assert activity["location"]["value"] == "https://zoom.example/j/123"
    assert "https://zoom.example/j/123" in activity["public_description"]
    assert activity["deal_id"] == deals[0]["id"]
    assert activity["org_id"] == orgs[0]["id"]
    assert activity["participants"] == [
        {"person_id": persons[0]["id"], "primary": True}
    ]
    assert activity["owner_id"] == pipedrive_host_id
    assert "&lt;b&gt;reporting&lt;/b&gt;" in activity["note"]
    assert MARKER_PREFIX in activity["note"]


def test_unchanged_poll_sends_nothing(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """A second pass over the same events makes no Pipedrive request."""
    add_booking()
    app.sync()
    pipedrive.clear_log()

    report = app.sync()

    assert report.ok
    assert pipedrive.requests == []


def test_full_rescan_unchanged_sends_no_write(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """A full rescan re-reads every event but writes nothing when none changed."""
    from bookingsync.engine.sync import Mode

    add_booking()
    app.sync()
    pipedrive.clear_log()

    app.sync(Mode.FULL)

    assert pipedrive.writes() == []


def test_reschedule_updates_same_activity(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A new slot moves the existing activity with one PATCH of the time fields."""
    event = add_booking(start=in_days(3, hour=9))
    app.sync()
    activity_id = pipedrive_emulator.live("activities")[0]["id"]
    pipedrive.clear_log()
    new_start = in_days(4, hour=15)

    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(hours=1))
    app.sync()

    assert write_paths(pipedrive) == [f"PATCH /api/v2/activities/{activity_id}"]
    activities = pipedrive_emulator.live("activities")
    assert [a["id"] for a in activities] == [activity_id]
    assert activities[0]["due_date"] == new_start.strftime("%Y-%m-%d")
    assert activities[0]["due_time"] == "15:00:00"
    assert activities[0]["duration"] == "01:00:00"


def test_reschedule_sends_only_changed_fields(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
    monkeypatch: Any,
) -> None:
    """The PATCH body contains the time fields only, not subject or note."""
    event = add_booking(start=in_days(3, hour=9))
    app.sync()
    sent: list[dict[str, Any]] = []
    original = app.client.update

    def spy(entity: str, item_id: int, body: dict[str, Any]) -> dict[str, Any]:
        sent.append(body)
        return original(entity, item_id, body)

    monkeypatch.setattr(app.client, "update", spy)
    new_start = in_days(3, hour=11)

    vyte_emulator.reschedule(event["_id"], new_start, new_start + timedelta(minutes=30))
    app.sync()

    assert len(sent) == 1
    assert set(sent[0]) <= {"due_date", "due_time", "duration", "note"}
    assert sent[0]["due_time"] == "11:00"


def test_cancel_marks_activity_then_noop(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Cancellation prefixes the subject, frees the slot, notes it, once."""
    event = add_booking()
    app.sync()
    vyte_emulator.cancel(event["_id"])

    report = app.sync()

    assert report.ok
    activity = pipedrive_emulator.live("activities")[0]
    assert activity["subject"] == "Cancelled: Product demo"
    assert activity["busy"] is False
    assert "Cancelled in the scheduling tool on" in activity["note"]
    assert len(pipedrive_emulator.live("deals")) == 1
    pipedrive.clear_log()
    app.sync()
    assert pipedrive.writes() == []


def test_cancel_listed_with_timestamp(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A cancelled event that stays in the listing is cancelled too."""
    vyte_emulator.list_cancelled = True
    app = make_app()
    event = add_booking()
    app.sync()
    vyte_emulator.cancel(event["_id"])

    app.sync()

    assert pipedrive_emulator.live("activities")[0]["subject"].startswith("Cancelled: ")


def test_cancel_delete_mode_deletes_activity(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """With cancellation_mode=delete the activity is deleted, the deal kept."""
    app = make_app(cancellation_mode="delete")
    event = add_booking()
    app.sync()
    vyte_emulator.cancel(event["_id"])

    app.sync()

    assert pipedrive_emulator.live("activities") == []
    assert len(pipedrive_emulator.live("deals")) == 1


def test_vanished_event_is_cancelled(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """An event gone from Vyte (404 by id) cancels its activity."""
    event = add_booking()
    app.sync()
    vyte_emulator.remove(event["_id"])

    app.sync()

    assert pipedrive_emulator.live("activities")[0]["subject"].startswith("Cancelled: ")


def test_hidden_but_active_event_is_kept(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive: EmulatorServer,
) -> None:
    """An event missing from the listing but confirmed by id is left alone."""
    event = add_booking()
    app.sync()
    vyte_emulator.hide(event["_id"])
    pipedrive.clear_log()

    app.sync()

    assert pipedrive.writes() == []


def test_existing_person_matched_case_insensitively(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """A person stored as Jane.Roe@ACME.example is reused, not duplicated."""
    existing = pipedrive_emulator.ui_create(
        "persons",
        {
            "name": "Jane R. (existing)",
            "emails": [{"value": "Jane.Roe@ACME.example", "primary": True}],
            "owner_id": 1,
        },
    )
    add_booking([{"full_name": "Jane Roe", "email": "jane.roe@acme.example"}])

    app.sync()

    persons = pipedrive_emulator.live("persons")
    assert [p["id"] for p in persons] == [existing["id"]]
    assert persons[0]["name"] == "Jane R. (existing)"
    assert persons[0]["owner_id"] == 1
    activity = pipedrive_emulator.live("activities")[0]
    assert activity["participants"][0]["person_id"] == existing["id"]


def test_free_mail_booker_gets_no_organization(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """A gmail.com booker gets a person and a person deal, no organization."""
    add_booking([{"full_name": "Max Mustermann", "email": "max.m@gmail.com"}])

    app.sync()

    assert pipedrive_emulator.live("organizations") == []
    deals = pipedrive_emulator.live("deals")
    assert [d["title"] for d in deals] == ["Max Mustermann"]
    assert deals[0]["org_id"] is None


def test_domain_names_organization(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """Without a company, the email domain names the organization."""
    add_booking([{"full_name": "Jane Roe", "email": "jane@initech.example"}])

    app.sync()

    assert [o["name"] for o in pipedrive_emulator.live("organizations")] == [
        "initech.example"
    ]


def test_existing_organization_reused(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """An organization with the same name in another case is reused."""
    org = pipedrive_emulator.ui_create("organizations", {"name": "Acme Corp"})
    add_booking(
        [
            {
                "full_name": "Jane Roe",
                "email": "jane@acme.example",
                "company": "ACME CORP",
            }
        ]
    )

    app.sync()

    assert [o["id"] for o in pipedrive_emulator.live("organizations")] == [org["id"]]


def test_organization_creation_can_be_disabled(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """create_organizations=false creates persons and deals but no organization."""
    app = make_app(create_organizations=False, create_deals=False)
    add_booking()

    app.sync()

    assert pipedrive_emulator.live("organizations") == []
    assert pipedrive_emulator.live("deals") == []
    assert len(pipedrive_emulator.live("activities")) == 1


def test_organizer_not_created_as_person(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """The host listed among invitees never becomes a Pipedrive person."""
    add_booking(host_as_invitee=True)

    app.sync()

    emails = [p["emails"][0]["value"] for p in pipedrive_emulator.live("persons")]
    assert emails == ["jane.roe@acme.example"]


def test_internal_domain_invitee_is_not_a_person(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Colleagues on an internal domain are left out of persons."""
    app = make_app(internal_domains="oursales.example")
    add_booking(
        [
            {"full_name": "Colleague", "email": "kim@oursales.example"},
            {"full_name": "Jane Roe", "email": "jane.roe@acme.example"},
        ]
    )

    app.sync()

    emails = [p["emails"][0]["value"] for p in pipedrive_emulator.live("persons")]
    assert emails == ["jane.roe@acme.example"]


def test_only_organizer_is_skipped(
    app: App,
    vyte_emulator: VyteEmulator,
    host_id: str,
    pipedrive: EmulatorServer,
) -> None:
    """An event whose only invitee is the organizer creates nothing."""
    from bookingsync.sandbox.vyte_events import build_event

    start = in_days(1)
    vyte_emulator.add_event(
        build_event(
            host_email="sam.seller@oursales.example",
            host_name="Sam Seller",
            host_user_id=host_id,
            title="Solo",
            slots=[(start, start + timedelta(minutes=30))],
            invitees=[],
        )
    )

    report = app.sync()

    assert report.ok
    assert report.run is not None
    assert report.run.skipped == 1
    assert pipedrive.writes() == []


def test_unconfirmed_event_ignored(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """An event without a confirmed slot reaches Pipedrive not at all."""
    add_booking(confirmed_slot=None)

    app.sync()

    assert pipedrive.writes() == []


def test_unconfirm_then_reconfirm(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Going back to unconfirmed changes nothing; the reconfirmation updates."""
    event = add_booking()
    app.sync()
    pipedrive.clear_log()

    vyte_emulator.unconfirm(event["_id"])
    app.sync()
    assert pipedrive.writes() == []

    vyte_emulator.confirm(event["_id"], 0)
    app.sync()
    activities = pipedrive_emulator.live("activities")
    assert len(activities) == 1
    assert not activities[0]["subject"].startswith("Cancelled")


def test_non_booking_page_event_needs_setting(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """vyteme=false events sync only with include_all_events."""
    add_booking(vyteme=False)
    make_app().sync()
    assert pipedrive_emulator.live("activities") == []

    make_app(include_all_events=True).sync()
    assert len(pipedrive_emulator.live("activities")) == 1


def test_several_invitees_become_participants(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """Invitees up to the limit become participants, booker primary."""
    app = make_app(max_persons_per_booking=2)
    add_booking(
        [
            {"full_name": "Booker One", "email": "one@globex.example"},
            {"full_name": "Guest Two", "email": "two@globex.example"},
            {"full_name": "Guest Three", "email": "three@globex.example"},
        ]
    )

    app.sync()

    persons = {p["emails"][0]["value"]: p for p in pipedrive_emulator.live("persons")}
    assert sorted(persons) == ["one@globex.example", "two@globex.example"]
    activity = pipedrive_emulator.live("activities")[0]
    assert activity["participants"] == [
        {"person_id": persons["one@globex.example"]["id"], "primary": True},
        {"person_id": persons["two@globex.example"]["id"], "primary": False},
    ]
    assert "three@globex.example" in activity["note"]
    assert "attendees" not in activity or not activity["attendees"]


def test_returning_guest_needs_no_search(
    app: App,
    add_booking: AddBooking,
    pipedrive: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A second booking by a known booker reuses person, org and deal unsearched."""
    add_booking(title="First call")
    app.sync()
    pipedrive.clear_log()

    add_booking(title="Second call", start=in_days(6))
    app.sync()

    searches = [r.path for r in pipedrive.requests if "search" in r.path]
    assert searches == []
    assert len(pipedrive_emulator.live("persons")) == 1
    assert len(pipedrive_emulator.live("deals")) == 1
    assert len(pipedrive_emulator.live("activities")) == 2


def test_second_booker_same_company_reuses_deal(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """A colleague of a known booker joins the same organization and deal."""
    add_booking([{"full_name": "Jane Roe", "email": "jane@acme.example"}])
    app.sync()
    add_booking([{"full_name": "John Poe", "email": "john@acme.example"}])

    app.sync()

    assert len(pipedrive_emulator.live("organizations")) == 1
    assert len(pipedrive_emulator.live("persons")) == 2
    assert len(pipedrive_emulator.live("deals")) == 1


def test_all_day_slot_gets_local_date_without_time(
    app: App, add_booking: AddBooking, pipedrive_emulator: PipedriveEmulator
) -> None:
    """An all-day slot becomes a due date with no time."""
    start = in_days(5, hour=0)
    add_booking(start=start, minutes=24 * 60, all_day=True)

    app.sync()

    activity = pipedrive_emulator.live("activities")[0]
    assert activity["due_date"] == start.strftime("%Y-%m-%d")
    assert activity["due_time"] is None


def test_old_event_outside_lookback_ignored(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """An event that ended more than lookback_days ago is left alone."""
    add_booking(start=in_days(-45))

    app.sync()

    assert pipedrive.writes() == []


def test_full_page_splits_per_host(
    make_app: Callable[..., App],
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    vyte: EmulatorServer,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """A full first page is re-listed per host with creator_users."""
    from bookingsync.sandbox.vyte_events import build_event

    other = vyte_emulator.add_user("Olga Other", "olga@oursales.example")
    for index in range(2):
        add_booking([{"full_name": f"G{index}", "email": f"g{index}@acme.example"}])
    start = in_days(2)
    vyte_emulator.add_event(
        build_event(
            host_email="olga@oursales.example",
            host_name="Olga Other",
            host_user_id=other,
            title="Olga's demo",
            slots=[(start, start + timedelta(minutes=30))],
            invitees=[{"full_name": "Hans", "email": "hans@initech.example"}],
        )
    )
    app = make_app(vyte_page_limit=3)

    app.sync()

    assert len(pipedrive_emulator.live("activities")) == 3
    creators = [r.query.get("creator_users") for r in vyte.requests]
    assert [other] in creators


def test_invalid_event_fails_alone(
    app: App,
    add_booking: AddBooking,
    vyte_emulator: VyteEmulator,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    """An event with a dangling confirmed.date_id fails; the others sync."""
    broken = add_booking([{"full_name": "A", "email": "a@acme.example"}])
    vyte_emulator.events[broken["_id"]]["confirmed"]["date_id"] = "0" * 24
    add_booking([{"full_name": "B", "email": "b@initech.example"}])

    report = app.sync()

    assert list(report.failed) == [broken["_id"]]
    assert "matches no entry in dates" in report.failed[broken["_id"]]
    assert len(pipedrive_emulator.live("activities")) == 1


def test_dry_run_writes_nothing(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """A dry run plans the create but sends no Pipedrive request."""
    add_booking()

    report = app.sync(dry_run=True)

    assert [a.kind.value for a in report.actions] == ["create"]
    assert pipedrive.requests == []


def test_token_only_in_header(
    app: App, add_booking: AddBooking, pipedrive: EmulatorServer
) -> None:
    """No Pipedrive request carries the token in its URL."""
    add_booking()

    app.sync()

    assert pipedrive.requests
    for request in pipedrive.requests:
        assert "api_token" not in request.query
