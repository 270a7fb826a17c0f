"""Wiring: build the store, the source, the Pipedrive client and the engine."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from loguru import logger
from sqlalchemy.engine import make_url

from bookingsync.daemon.lock import SyncLock
from bookingsync.engine.admin import prune
from bookingsync.engine.store import Store
from bookingsync.engine.sync import Mode, SyncEngine, SyncReport
from bookingsync.logs import redactor
from bookingsync.metrics import MetricsFile
from bookingsync.models.db import open_engine
from bookingsync.settings import Settings, state_directory
from bookingsync.sinks.pipedrive import PipedriveClient
from bookingsync.sources.vyte import VyteClient, VyteSource


def lock_path(settings: Settings) -> Path:
    """Return the lock file: beside a SQLite database, else in the state dir."""
    url = make_url(settings.resolved_database_url())
    if url.get_backend_name() == "sqlite" and url.database not in (
        None,
        "",
        ":memory:",
    ):
        database = Path(str(url.database))
        return database.with_name(database.name + ".lock")
    # One lock per database, so that separate installations do not block
    # each other; the daemon and the CLI compute the same name.
    digest = hashlib.sha256(
        url.render_as_string(hide_password=True).encode()
    ).hexdigest()
    return state_directory() / f"bookingsync-{digest[:12]}.lock"


def open_store(settings: Settings) -> Store:
    return Store(open_engine(settings.resolved_database_url()))


@dataclass
class App:
    settings: Settings
    store: Store
    source: VyteSource
    client: PipedriveClient
    engine: SyncEngine
    lock: SyncLock
    metrics: MetricsFile | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        vyte_transport: httpx.BaseTransport | None = None,
        pipedrive_transport: httpx.BaseTransport | None = None,
    ) -> App:
        redactor.add(
            [
                settings.vyte_api_key.get_secret_value(),
                settings.pipedrive_api_token.get_secret_value(),
            ]
        )
        store = open_store(settings)
        source = VyteSource(
            settings, VyteClient.from_settings(settings, transport=vyte_transport)
        )
        client = PipedriveClient.from_settings(settings, transport=pipedrive_transport)
        engine = SyncEngine(settings, source, client, store)
        metrics = None
        if settings.metrics_file is not None:
            metrics = MetricsFile(settings.metrics_file, store, client.usage)
        return cls(
            settings,
            store,
            source,
            client,
            engine,
            SyncLock(lock_path(settings)),
            metrics,
        )

    def sync(
        self,
        mode: Mode = Mode.POLL,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        wait_seconds: float = 0.0,
        force: bool = False,
        since: datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Run one pass under the sync lock; raises ``LockBusy`` when held.

        A full rescan also prunes snapshots older than the retention setting.
        """
        self.lock.acquire(wait_seconds)
        try:
            report = self.engine.run(
                mode,
                dry_run=dry_run,
                trigger=trigger,
                force=force,
                since=since,
                progress=progress,
            )
            if mode is Mode.FULL and not dry_run:
                self.prune()
            if self.metrics is not None:
                self.metrics.update(report.run)
            return report
        finally:
            self.lock.release()

    def prune(self) -> None:
        bookings, runs = prune(
            self.store, self.engine.now(), self.settings.effective_retention_days
        )
        if bookings or runs:
            logger.info(
                "Pruned {bookings} booking snapshots and {runs} runs older than "
                "{days} days",
                bookings=bookings,
                runs=runs,
                days=self.settings.effective_retention_days,
            )

    def close(self) -> None:
        self.source.close()
        self.client.close()
        self.store.engine.dispose()
