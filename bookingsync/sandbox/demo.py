"""``bookingsync demo``: the real sync on the built-in sandbox.

Starts both emulators on 127.0.0.1, seeds realistic bookings, then runs the
real engine through a first sync, a reschedule and a cancellation, a pass with
nothing changed, and prints what landed in Pipedrive after each step.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from bookingsync.app import App
from bookingsync.logs import configure_logging
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import build_event
from bookingsync.settings import load_settings
from bookingsync.status import collect_status, render_status

DEMO_VYTE_KEY = "demo-vyte-key"
DEMO_PIPEDRIVE_TOKEN = "demo-pipedrive-token"
HOST = ("Sam Seller", "sam.seller@oursales.example")


def _slot(
    days: int, hour: int, minute: int = 0, length: int = 30
) -> tuple[datetime, datetime]:
    day = datetime.now(UTC) + timedelta(days=days)
    start = day.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return start, start + timedelta(minutes=length)


def seed(vyte: VyteEmulator, pipedrive: PipedriveEmulator) -> dict[str, str]:
    """Add the demo's bookings and Pipedrive's existing data; return event ids."""
    host_id = vyte.add_user(*HOST)
    pipedrive.add_user(*HOST)
    pipedrive.ui_create(
        "persons",
        {
            "name": "Lena Fischer",
            "emails": [{"value": "Lena.Fischer@Initech.example", "primary": True}],
        },
    )

    def add(
        title: str,
        slot: tuple[datetime, datetime],
        invitees: list[dict[str, Any]],
        **options: Any,
    ) -> str:
        event = build_event(
            host_email=HOST[1],
            host_name=HOST[0],
            host_user_id=host_id,
            title=title,
            slots=[slot],
            invitees=invitees,
            **options,
        )
        return vyte.add_event(event)

    return {
        "company": add(
            "Product demo",
            _slot(2, 9),
            [
                {
                    "full_name": "Jane Roe",
                    "email": "jane.roe@acme.example",
                    "phone": "+33 6 01 02 03 04",
                    "company": "ACME Corp",
                }
            ],
            place_name="Zoom",
            place_address="https://zoom.example/j/81234567890",
            message="We would like to see the reporting module.",
        ),
        "gmail": add(
            "Intro call",
            _slot(3, 14, 30),
            [{"full_name": "Max Mustermann", "email": "max.mustermann@gmail.com"}],
            timezone="Europe/Berlin",
        ),
        "returning": add(
            "Follow-up",
            _slot(4, 10),
            [{"full_name": "Lena Fischer", "email": "lena.fischer@initech.example"}],
            place_name="Initech HQ",
            place_address="12 Rue de la Paix, Paris",
        ),
        "group": add(
            "Onboarding workshop",
            _slot(5, 13, 0, 90),
            [
                {"full_name": "Akira Tanaka", "email": "akira@globex.example"},
                {"full_name": "Zoë Martin", "email": "zoe@globex.example"},
                {"full_name": "Omar Haddad", "email": "omar@globex.example"},
            ],
            place_name="Google Meet",
            place_address="https://meet.example/abc-defg-hij",
        ),
        "unconfirmed": add(
            "Still choosing a slot",
            _slot(6, 11),
            [{"full_name": "Pat Pending", "email": "pat@umbrella.example"}],
            confirmed_slot=None,
        ),
    }


def run_demo(keep_running: bool = False) -> int:
    configure_logging("WARNING")
    vyte_emulator = VyteEmulator(api_key=DEMO_VYTE_KEY)
    pipedrive_emulator = PipedriveEmulator(token=DEMO_PIPEDRIVE_TOKEN, burst_limit=20)
    with (
        EmulatorServer(vyte_emulator) as vyte,
        EmulatorServer(pipedrive_emulator) as pipedrive,
        tempfile.TemporaryDirectory(prefix="bookingsync-demo-") as state_dir,
    ):
        settings = load_settings(
            None,
            vyte_api_key=DEMO_VYTE_KEY,
            vyte_base_url=vyte.url,
            pipedrive_api_token=DEMO_PIPEDRIVE_TOKEN,
            pipedrive_base_url=pipedrive.url,
            database_url=f"sqlite:///{Path(state_dir) / 'demo.db'}",
        )
        click.echo(
            f"Sandbox: Vyte emulator at {vyte.url}, "
            f"Pipedrive emulator at {pipedrive.url}"
        )
        events = seed(vyte_emulator, pipedrive_emulator)
        app = App.build(settings)
        try:
            _step(app, pipedrive, pipedrive_emulator, "1. First sync of 5 Vyte events")
            start, end = _slot(7, 16)
            vyte_emulator.reschedule(events["company"], start, end)
            vyte_emulator.cancel(events["gmail"])
            _step(
                app,
                pipedrive,
                pipedrive_emulator,
                "2. 'Product demo' rescheduled, 'Intro call' cancelled",
            )
            _step(app, pipedrive, pipedrive_emulator, "3. Nothing changed")
            click.echo("\n== `bookingsync status` after the demo")
            click.echo(render_status(collect_status(app.store)))
            if keep_running:
                click.echo(
                    "\nEmulators keep running; press Ctrl-C to stop. To use them:\n"
                    f"  export BOOKINGSYNC_VYTE_BASE_URL={vyte.url}\n"
                    f"  export BOOKINGSYNC_VYTE_API_KEY={DEMO_VYTE_KEY}\n"
                    f"  export BOOKINGSYNC_PIPEDRIVE_BASE_URL={pipedrive.url}\n"
                    f"  export BOOKINGSYNC_PIPEDRIVE_API_TOKEN={DEMO_PIPEDRIVE_TOKEN}\n"
                    f"  export BOOKINGSYNC_DATABASE_URL={settings.database_url}"
                )
                _wait_forever()
        finally:
            app.close()
    return 0


def _step(
    app: App, server: EmulatorServer, emulator: PipedriveEmulator, title: str
) -> None:
    server.clear_log()
    report = app.sync(trigger="demo")
    run = report.run
    click.echo(f"\n== {title}")
    if run is not None:
        click.echo(
            f"   run {run.id}: {run.created} created, {run.updated} updated, "
            f"{run.cancelled} cancelled, {run.skipped} skipped, {run.failed} failed; "
            f"{run.requests} Pipedrive requests, about {run.tokens} API tokens"
        )
    click.echo(render_pipedrive(emulator))


def render_pipedrive(emulator: PipedriveEmulator) -> str:
    """Render Pipedrive's activities, persons, organizations and deals."""
    persons = {p["id"]: p["name"] for p in emulator.live("persons")}
    orgs = {o["id"]: o["name"] for o in emulator.live("organizations")}
    rows = [
        (
            "id",
            "subject",
            "due (UTC)",
            "length",
            "participants",
            "organization",
            "deal",
            "location",
        )
    ]
    for activity in emulator.live("activities"):
        due = f"{activity['due_date']} {(activity.get('due_time') or '')[:5]}".strip()
        rows.append(
            (
                str(activity["id"]),
                activity["subject"],
                due,
                (activity.get("duration") or "")[:5],
                ", ".join(
                    persons.get(p["person_id"], "?") for p in activity["participants"]
                ),
                orgs.get(activity.get("org_id"), "-"),
                str(activity.get("deal_id") or "-"),
                ((activity.get("location") or {}).get("value") or "-")[:40],
            )
        )
    deals = ", ".join(f"#{d['id']} {d['title']}" for d in emulator.live("deals"))
    return "\n".join(
        [
            _table(rows),
            f"   persons: {len(persons)} ({', '.join(persons.values())})",
            f"   organizations: {', '.join(orgs.values()) or '-'}",
            f"   deals: {deals or '-'}",
        ]
    )


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "   " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
