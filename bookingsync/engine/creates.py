"""Creates in Pipedrive that survive crashes and lost replies without duplicates.

Pipedrive has no idempotency keys, so a create whose reply never arrived may
or may not have happened. ``TrackedCreator`` records an intent before each
POST and, whenever the outcome is unknown (a timeout, a dropped connection, a
run killed mid-request), looks the item up by its natural key or marker before
sending the POST again. Lookups use list endpoints with ``updated_since``,
which see new items at once, unlike the search index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from loguru import logger

from bookingsync.engine.store import Store
from bookingsync.errors import TransientError
from bookingsync.http import backoff_delay
from bookingsync.sinks.pipedrive import PipedriveClient

CREATE_ATTEMPTS = 3
# Margin for clock skew between this host and Pipedrive in recovery lookups.
CLOCK_SKEW = timedelta(minutes=10)

Finder = Callable[[datetime], int | None]


class TrackedCreator:
    def __init__(
        self,
        client: PipedriveClient,
        store: Store,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.store = store
        self.sleep = sleep

    def create(
        self,
        booking_key: str,
        kind: str,
        natural_key: str,
        body: dict[str, object],
        find: Finder,
        remember: Callable[[int], object],
    ) -> tuple[int, bool]:
        """Create an item once; return its id and whether it already existed.

        ``find(since)`` looks for an item this booking created after ``since``;
        ``remember(id)`` records the id locally before the intent is cleared.
        """
        intent = self.store.intent(booking_key, kind, natural_key)
        if intent is not None:
            found = find(intent.created_at - CLOCK_SKEW)
            if found is not None:
                logger.warning(
                    "Recovered {kind} {item_id} that an interrupted run created "
                    "for booking {booking}",
                    kind=kind,
                    item_id=found,
                    booking=booking_key,
                )
                self._finish(booking_key, kind, natural_key, found, remember)
                return found, True
        intent = self.store.record_intent(booking_key, kind, natural_key)
        item_id = self._post(booking_key, kind, body, find, intent.created_at)
        self._finish(booking_key, kind, natural_key, item_id, remember)
        return item_id, False

    def _post(
        self,
        booking_key: str,
        kind: str,
        body: dict[str, object],
        find: Finder,
        since: datetime,
    ) -> int:
        attempt = 0
        while True:
            attempt += 1
            try:
                return int(self.client.create(kind, body)["id"])
            except TransientError as exc:
                # The POST may have been applied even though no reply came.
                found = find(since - CLOCK_SKEW)
                if found is not None:
                    return found
                if attempt >= CREATE_ATTEMPTS:
                    raise
                logger.warning(
                    "Create of {kind} for booking {booking} failed, none was "
                    "made; retrying (attempt {attempt} of {max}): {error}",
                    kind=kind,
                    booking=booking_key,
                    attempt=attempt,
                    max=CREATE_ATTEMPTS,
                    error=str(exc),
                )
                self.sleep(backoff_delay(attempt))

    def _finish(
        self,
        booking_key: str,
        kind: str,
        natural_key: str,
        item_id: int,
        remember: Callable[[int], object],
    ) -> None:
        remember(item_id)
        self.store.clear_intent(booking_key, kind, natural_key)


def rfc3339(moment: datetime) -> str:
    """Format a UTC time for Pipedrive; naive values (from SQLite) are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
