"""Opening the state database: engine, SQLite pragmas, schema version.

Nothing here is SQLite-only except the connection pragmas, which are applied
only when the URL names SQLite; any SQLAlchemy URL works.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlmodel import Session, SQLModel, create_engine

from bookingsync.errors import ConfigurationError
from bookingsync.models.state import SCHEMA_VERSION, Meta

SQLITE_BUSY_TIMEOUT_MS = 10_000


def open_engine(url: str) -> Engine:
    """Create the engine, prepare a SQLite file, and migrate the schema.

    Raises ``ConfigurationError`` for a database written by a newer version.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            [
                f"BOOKINGSYNC_DATABASE_URL {url!r} is not a database URL; use for "
                "example sqlite:////var/lib/bookingsync/bookingsync.db"
            ]
        ) from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database not in (None, "", ":memory:"):
        try:
            _prepare_sqlite_file(Path(parsed.database))
        except OSError as exc:
            raise ConfigurationError(
                [
                    f"cannot create the state database {parsed.database!r}: "
                    f"{exc.strerror}; check BOOKINGSYNC_DATABASE_URL and the "
                    "directory's permissions"
                ]
            ) from None

    connect_args: dict[str, Any] = {}
    if is_sqlite:
        # Transactions are begun explicitly (see _begin_immediate).
        connect_args = {"isolation_level": None, "check_same_thread": False}
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(
            [f"BOOKINGSYNC_DATABASE_URL {shown!r} cannot be used: {exc}"]
        ) from None
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)

    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigurationError(
            [
                f"cannot open the state database {shown!r}: {reason}; check "
                "BOOKINGSYNC_DATABASE_URL and that this user may use it"
            ]
        ) from None
    except Exception:
        engine.dispose()
        raise
    return engine


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database directory and file readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old_umask = os.umask(0o077)
    try:
        path.touch(exist_ok=True)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: each commit records a Pipedrive side effect (an id we created), so
    # a commit must survive a power loss, not only a process crash. Writes are
    # a few per booking, so the extra fsync costs nothing noticeable.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so busy_timeout applies
    # instead of a deferred transaction failing at once when it starts writing.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


MIGRATE_ATTEMPTS = 5


def migrate(engine: Engine) -> None:
    """Create missing tables and record the schema version.

    Raises ``ConfigurationError`` when the database is newer than this code,
    before changing anything in it. Two processes opening a new database at
    once (the daemon and `bookingsync status`) may both try to create the
    tables; the loser of that race finds them and tries again.
    """
    for attempt in range(1, MIGRATE_ATTEMPTS + 1):
        try:
            _migrate_once(engine)
            return
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if attempt == MIGRATE_ATTEMPTS or "exist" not in str(exc.orig).lower():
                raise
            time.sleep(0.1 * attempt)


def _migrate_once(engine: Engine) -> None:
    found = _recorded_schema_version(engine)
    if found is not None and found > SCHEMA_VERSION:
        raise ConfigurationError(
            [
                f"the state database has schema version {found}, newer than "
                f"this bookingsync supports ({SCHEMA_VERSION}): upgrade "
                "bookingsync or point BOOKINGSYNC_DATABASE_URL at another database"
            ]
        )
    SQLModel.metadata.create_all(engine)
    if found is None:
        with Session(engine) as session:
            if session.get(Meta, "schema_version") is None:
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                session.commit()


def _recorded_schema_version(engine: Engine) -> int | None:
    """Return the schema version stored in the database, or None when new."""
    if not inspect(engine).has_table(Meta.__tablename__):
        return None
    with Session(engine) as session:
        row = session.get(Meta, "schema_version")
    return int(row.value) if row is not None else None
