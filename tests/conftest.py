"""Shared fixtures: emulators on 127.0.0.1, settings pointing at them, the app."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from bookingsync.app import App
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.sandbox.vyte_events import build_event
from bookingsync.settings import Settings, load_settings

TEST_DATABASE_URL = os.environ.get("BOOKINGSYNC_TEST_DATABASE_URL")
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
VYTE_KEY = "vyte-test-key-4f9a"
PIPEDRIVE_TOKEN = "pd-test-token-81c2"
HOST_EMAIL = "sam.seller@oursales.example"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove BOOKINGSYNC_* variables so no test reads the developer's setup."""
    for name in list(os.environ):
        if name.startswith("BOOKINGSYNC_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setattr(
        "bookingsync.settings.DEFAULT_CONFIG_FILE", Path("/nonexistent")
    )


@pytest.fixture
def vyte_emulator() -> VyteEmulator:
    return VyteEmulator(api_key=VYTE_KEY)


@pytest.fixture
def vyte(vyte_emulator: VyteEmulator) -> Iterator[EmulatorServer]:
    with EmulatorServer(vyte_emulator) as server:
        yield server


@pytest.fixture
def pipedrive_emulator() -> PipedriveEmulator:
    return PipedriveEmulator(token=PIPEDRIVE_TOKEN)


@pytest.fixture
def pipedrive_host_id(pipedrive_emulator: PipedriveEmulator) -> int:
    """The Pipedrive user whose email matches the Vyte host."""
    return pipedrive_emulator.add_user("Sam Seller", HOST_EMAIL)


@pytest.fixture
def pipedrive(
    pipedrive_emulator: PipedriveEmulator, pipedrive_host_id: int
) -> Iterator[EmulatorServer]:
    with EmulatorServer(pipedrive_emulator) as server:
        yield server


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or a fresh schema in the PostgreSQL test database."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{tmp_path / 'state' / 'bookingsync.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    # NullPool: no connection outlives its block, so none is left for the GC.
    admin = create_engine(TEST_DATABASE_URL, poolclass=NullPool)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in TEST_DATABASE_URL else "?"
    try:
        yield f"{TEST_DATABASE_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def make_settings(
    vyte: EmulatorServer, pipedrive: EmulatorServer, database_url: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "vyte_api_key": VYTE_KEY,
            "vyte_base_url": vyte.url,
            "pipedrive_api_token": PIPEDRIVE_TOKEN,
            "pipedrive_base_url": pipedrive.url,
            "database_url": database_url,
            "pipedrive_burst_limit": 1000,
        }
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        app = App.build(make_settings(**overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()


@pytest.fixture
def host_id(vyte_emulator: VyteEmulator) -> str:
    return vyte_emulator.add_user("Sam Seller", HOST_EMAIL)


@pytest.fixture
def cli_env(
    vyte: EmulatorServer, pipedrive: EmulatorServer, database_url: str
) -> dict[str, str]:
    """Environment for a bookingsync subprocess pointed at the emulators."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKINGSYNC_")}
    env.update(
        {
            "BOOKINGSYNC_VYTE_API_KEY": VYTE_KEY,
            "BOOKINGSYNC_VYTE_BASE_URL": vyte.url,
            "BOOKINGSYNC_PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
            "BOOKINGSYNC_PIPEDRIVE_BASE_URL": pipedrive.url,
            "BOOKINGSYNC_DATABASE_URL": database_url,
            "BOOKINGSYNC_PIPEDRIVE_BURST_LIMIT": "1000",
            "BOOKINGSYNC_LOOKBACK_DAYS": "100000",
        }
    )
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bookingsync", "--config", os.devnull, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def in_days(days: float, hour: int = 9, minute: int = 0) -> datetime:
    """Return a UTC time ``days`` from now at the given hour."""
    base = datetime.now(UTC) + timedelta(days=days)
    return base.replace(hour=hour, minute=minute, second=0, microsecond=0)


@pytest.fixture
def add_booking(
    vyte_emulator: VyteEmulator, host_id: str
) -> Callable[..., dict[str, Any]]:
    """Add a confirmed booking-page event to the Vyte emulator and return it."""

    def add(
        invitees: list[dict[str, Any]] | None = None,
        *,
        start: datetime | None = None,
        minutes: int = 30,
        **options: Any,
    ) -> dict[str, Any]:
        start = start or in_days(3)
        event = build_event(
            host_email=HOST_EMAIL,
            host_name="Sam Seller",
            host_user_id=host_id,
            title=options.pop("title", "Product demo"),
            slots=[(start, start + timedelta(minutes=minutes))],
            invitees=invitees
            or [{"full_name": "Jane Roe", "email": "jane.roe@acme.example"}],
            **options,
        )
        vyte_emulator.add_event(event)
        return event

    return add
