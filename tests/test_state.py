"""The state database: SQLite set-up, schema version, locking and the Store."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bookingsync.engine.store import RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, Store
from bookingsync.errors import ConfigurationError
from bookingsync.models.db import open_engine
from bookingsync.models.state import SCHEMA_VERSION, Meta
from tests.conftest import TEST_DATABASE_URL

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
KEY = "vyte:5f0d7eb02003d0971e2a961a"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bookingsync.db"


@pytest.fixture
def sqlite_engine(sqlite_path: Path) -> Iterator[Engine]:
    engine = open_engine(sqlite_url(sqlite_path))
    yield engine
    engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "test-database",
            marks=pytest.mark.skipif(
                not TEST_DATABASE_URL, reason="BOOKINGSYNC_TEST_DATABASE_URL is unset"
            ),
        ),
    ]
)
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, then the emptied BOOKINGSYNC_TEST_DATABASE_URL when set."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state" / "bookingsync.db")
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
def any_engine(any_database_url: str) -> Iterator[Engine]:
    engine = open_engine(any_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(any_engine: Engine) -> Store:
    return Store(any_engine)


def set_schema_version(engine: Engine, version: int) -> None:
    with Session(engine) as session:
        session.merge(Meta(key="schema_version", value=str(version)))
        session.commit()


def read_pragma(engine: Engine, name: str) -> object:
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


# SQLite set-up ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [
        pytest.param("journal_mode", "wal", id="journal-mode-wal"),
        pytest.param("foreign_keys", 1, id="foreign-keys-on"),
        pytest.param("synchronous", 2, id="synchronous-full"),
        pytest.param("busy_timeout", 10_000, id="busy-timeout-10s"),
    ],
)
def test_open_engine_sqlite_pragmas(
    sqlite_engine: Engine, pragma: str, expected: object
) -> None:
    """Every SQLite connection gets the durability and locking pragmas."""
    assert read_pragma(sqlite_engine, pragma) == expected


def test_open_engine_pragmas_on_every_connection(sqlite_engine: Engine) -> None:
    """A connection opened after the pool is emptied gets the pragmas too."""
    sqlite_engine.dispose()

    assert read_pragma(sqlite_engine, "synchronous") == 2
    assert read_pragma(sqlite_engine, "busy_timeout") == 10_000


def test_open_engine_file_owner_only(sqlite_path: Path, sqlite_engine: Engine) -> None:
    """The database file is 0600 and the directory created for it 0700."""
    assert mode_of(sqlite_path) == 0o600
    assert mode_of(sqlite_path.parent) == 0o700


def test_open_engine_wal_files_owner_only(
    sqlite_path: Path, sqlite_engine: Engine
) -> None:
    """SQLite's WAL and shared-memory files copy the database file's mode."""
    Store(sqlite_engine).set_meta("probe", "1")

    with sqlite_engine.connect():
        for suffix in ("-wal", "-shm"):
            sidecar = sqlite_path.with_name(sqlite_path.name + suffix)
            assert mode_of(sidecar) == 0o600


def test_open_engine_existing_file_tightened(sqlite_path: Path) -> None:
    """An existing world-readable database file is made owner-only."""
    sqlite_path.parent.mkdir(parents=True)
    sqlite_path.touch()
    os.chmod(sqlite_path, 0o644)

    open_engine(sqlite_url(sqlite_path)).dispose()

    assert mode_of(sqlite_path) == 0o600


def test_store_write_waits_for_other_writer(
    sqlite_path: Path, sqlite_engine: Engine
) -> None:
    """A write waits while another process holds the write lock, then succeeds."""
    store = Store(sqlite_engine)
    locked = threading.Event()

    def hold_write_lock() -> None:
        other = sqlite3.connect(sqlite_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO meta (key, value) VALUES ('other', 'x')")
            locked.set()
            time.sleep(0.5)
            other.execute("COMMIT")
        finally:
            other.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    assert locked.wait(5)
    started = time.monotonic()
    store.update_booking(KEY, status="active")
    waited = time.monotonic() - started
    holder.join()

    assert waited >= 0.3
    assert store.booking_state(KEY) is not None
    assert store.get_meta("other") == "x"


# Schema version -----------------------------------------------------------------


def test_open_engine_records_schema_version(any_engine: Engine) -> None:
    """A new database records the code's schema version in ``meta``."""
    assert Store(any_engine).get_meta("schema_version") == str(SCHEMA_VERSION)


def test_open_engine_reopens_same_version(
    any_database_url: str, any_engine: Engine
) -> None:
    """Opening a database of the current version again works and keeps data."""
    Store(any_engine).remember_person("jane.roe@acme.example", 7)

    again = open_engine(any_database_url)
    try:
        assert Store(again).person_id("jane.roe@acme.example") == 7
    finally:
        again.dispose()


def test_open_engine_newer_schema_refused(
    any_database_url: str, any_engine: Engine
) -> None:
    """A database written by a newer version is refused, naming both versions."""
    set_schema_version(any_engine, SCHEMA_VERSION + 1)

    with pytest.raises(ConfigurationError) as caught:
        open_engine(any_database_url)

    problem = caught.value.problems[0]
    assert f"schema version {SCHEMA_VERSION + 1}" in problem
    assert f"supports ({SCHEMA_VERSION})" in problem
    assert "BOOKINGSYNC_DATABASE_URL" in problem


def test_open_engine_newer_schema_left_unchanged(
    any_database_url: str, any_engine: Engine
) -> None:
    """Refusing a newer database creates none of this version's tables in it."""
    with any_engine.begin() as connection:
        connection.execute(text("DROP TABLE intent"))
    set_schema_version(any_engine, SCHEMA_VERSION + 1)

    with pytest.raises(ConfigurationError):
        open_engine(any_database_url)

    assert not inspect(any_engine).has_table("intent")


# Store round trips --------------------------------------------------------------


def test_store_update_booking_creates_then_updates(store: Store) -> None:
    """The first update creates the row; later ones change only given columns."""
    store.update_booking(
        KEY, status="active", person_ids=[11, 12], slot_end=NOW, activity_id=5
    )
    store.update_booking(KEY, deal_id=9)

    row = store.booking_state(KEY)
    assert row is not None
    assert row.source == "vyte"
    assert row.booking_id == "5f0d7eb02003d0971e2a961a"
    assert row.status == "active"
    assert row.persons() == [11, 12]
    assert row.slot_end == NOW
    assert row.activity_id == 5
    assert row.deal_id == 9


def test_store_booking_states_by_source(store: Store) -> None:
    """Rows are listed per source and keyed by the source's booking id."""
    store.update_booking(KEY, status="active")
    store.update_booking("calendly:abc", status="active")

    states = store.booking_states("vyte")

    assert list(states) == ["5f0d7eb02003d0971e2a961a"]


def test_store_synced_content_round_trip(store: Store) -> None:
    """The synced snapshot is stored as JSON and read back unchanged."""
    content = {"title": "Démo 山田 🚀", "invitees": [{"email": "a@b.example"}]}
    store.update_booking(KEY, status="active", synced_content=json.dumps(content))

    row = store.booking_state(KEY)

    assert row is not None
    assert row.synced() == content


def test_store_record_failure_delay_grows(store: Store) -> None:
    """Each failure doubles the retry delay, from one minute up to the cap."""
    delays = []
    for _ in range(12):
        row = store.record_failure(KEY, "Pipedrive POST /api/v2/persons: HTTP 503", NOW)
        assert row.next_retry_at is not None
        delays.append((row.next_retry_at - NOW).total_seconds())

    stored = store.booking_state(KEY)
    assert delays[:4] == [
        RETRY_BASE_SECONDS,
        2 * RETRY_BASE_SECONDS,
        4 * RETRY_BASE_SECONDS,
        8 * RETRY_BASE_SECONDS,
    ]
    assert delays == sorted(delays)
    assert delays[-1] == RETRY_CAP_SECONDS
    assert stored is not None
    assert stored.attempts == 12
    assert stored.next_retry_at == NOW + timedelta(seconds=RETRY_CAP_SECONDS)
    assert stored.error == "Pipedrive POST /api/v2/persons: HTTP 503"


def test_store_record_failure_permanent_no_retry(store: Store) -> None:
    """A permanent failure records the error but no retry time."""
    store.record_failure(KEY, "invalid booker email", NOW, permanent=True)

    row = store.booking_state(KEY)

    assert row is not None
    assert row.error == "invalid booker email"
    assert row.next_retry_at is None


def test_store_record_failure_error_truncated(store: Store) -> None:
    """A very long error is cut to 2000 characters."""
    store.record_failure(KEY, "x" * 5000, NOW)

    row = store.booking_state(KEY)

    assert row is not None
    assert row.error == "x" * 2000


def test_store_failed_bookings_listed(store: Store) -> None:
    """Only bookings with an error are listed as failed."""
    store.update_booking("vyte:ok", status="active")
    store.record_failure(KEY, "boom", NOW)

    failed = store.failed_bookings()

    assert [row.key for row in failed] == [KEY]


def test_store_datetimes_read_back_as_utc(store: Store) -> None:
    """A time given with an offset is read back as the same instant in UTC."""
    paris = datetime(2026, 7, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    store.update_booking(KEY, status="active", slot_end=paris)

    row = store.booking_state(KEY)

    assert row is not None
    assert row.slot_end == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert row.slot_end is not None
    assert row.slot_end.utcoffset() == timedelta(0)


def test_store_person_map_round_trip(store: Store) -> None:
    """Persons are remembered by email, replaced, and forgotten."""
    store.remember_person("jane.roe@acme.example", 101)
    store.remember_person("jane.roe@acme.example", 102)
    store.remember_person("max@acme.example", 103)
    store.forget_person("max@acme.example")

    assert store.person_id("jane.roe@acme.example") == 102
    assert store.person_id("max@acme.example") is None
    assert store.person_id("nobody@acme.example") is None


def test_store_organization_map_ignores_case(store: Store) -> None:
    """Organizations are found by name in any letter case."""
    store.remember_organization("ACME Corp", 201)

    assert store.organization_id("acme corp") == 201
    assert store.organization_id("Acme CORP") == 201
    assert store.organization_id("Other Ltd") is None


def test_store_deal_map_round_trip(store: Store) -> None:
    """Deals are found by owner key; forgetting a deal drops every owner of it."""
    store.remember_deal("org:201", 301)
    store.remember_deal("person:101", 301)
    store.remember_deal("org:202", 302)
    store.forget_deal_id(301)

    assert store.deal_id("org:201") is None
    assert store.deal_id("person:101") is None
    assert store.deal_id("org:202") == 302


def test_store_cached_users_fresh(store: Store) -> None:
    """Cached Pipedrive users are returned while younger than a day."""
    store.cache_users({"sam.seller@oursales.example": 1, "ops@oursales.example": 2})

    assert store.cached_users() == {
        "sam.seller@oursales.example": 1,
        "ops@oursales.example": 2,
    }


def test_store_cached_users_stale(store: Store) -> None:
    """A cache older than a day is treated as absent."""
    fetched_at = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    store.set_meta(
        "pipedrive_users",
        json.dumps({"fetched_at": fetched_at, "users": {"sam@oursales.example": 1}}),
    )

    assert store.cached_users() is None


def test_store_cached_users_absent(store: Store) -> None:
    """Without a cache there are no cached users."""
    assert store.cached_users() is None


def test_store_meta_set_and_clear(store: Store) -> None:
    """A meta value can be set, replaced and cleared."""
    store.set_meta("paused_until", "2026-03-03T00:00:00+00:00")
    store.set_meta("paused_until", "2026-03-04T00:00:00+00:00")
    replaced = store.get_meta("paused_until")
    store.set_meta("paused_until", None)

    assert replaced == "2026-03-04T00:00:00+00:00"
    assert store.get_meta("paused_until") is None


def test_store_intent_keeps_earliest(store: Store) -> None:
    """Recording an intent twice keeps the first row until it is cleared."""
    first = store.record_intent(KEY, "person", "jane.roe@acme.example")
    second = store.record_intent(KEY, "person", "jane.roe@acme.example")
    store.clear_intent(KEY, "person", "jane.roe@acme.example")

    assert second.created_at == first.created_at
    assert store.intent(KEY, "person", "jane.roe@acme.example") is None


def test_store_runs_listed_newest_first(store: Store) -> None:
    """Runs are stored with their finish time and listed newest first."""
    first = store.start_run("schedule", "poll", dry_run=False)
    store.finish_run(first)
    second = store.start_run("cli", "full", dry_run=True)

    runs = store.recent_runs()

    assert [run.id for run in runs] == [second.id, first.id]
    assert runs[1].finished_at is not None
    assert runs[0].dry_run is True
