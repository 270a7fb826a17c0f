"""One sync pass: list the source, plan the changes, apply them one by one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from loguru import logger

from bookingsync.engine.apply import Applier
from bookingsync.engine.plan import Action, ActionKind, plan_booking, plan_cancel
from bookingsync.engine.store import Store
from bookingsync.errors import (
    ApiError,
    AuthFailed,
    BookingSyncError,
    BudgetExhausted,
    InvalidBooking,
)
from bookingsync.models.booking import Booking
from bookingsync.models.state import BookingState, RemoteState, Run
from bookingsync.settings import Settings
from bookingsync.sinks.pipedrive import PipedriveClient
from bookingsync.sources.base import Cancelled, Invalid, Listing, Source


class Mode(StrEnum):
    POLL = "poll"
    FULL = "full"


@dataclass
class SyncReport:
    """What one pass did; ``actions`` is the plan in order."""

    run_id: int | None
    actions: list[Action] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    run: Run | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


class SyncEngine:
    """Sync one source into Pipedrive."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        client: PipedriveClient,
        store: Store,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop_requested: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.client = client
        self.store = store
        self.now = now
        self.stop_requested = stop_requested or threading.Event()
        self.applier = Applier(settings, client, store)

    def run(
        self, mode: Mode = Mode.POLL, *, dry_run: bool = False, trigger: str = "manual"
    ) -> SyncReport:
        run = self.store.start_run(trigger, mode.value, dry_run)
        report = SyncReport(run.id, run=run)
        self.client.usage.reset()
        started = time.monotonic()
        try:
            self._run(run, report, mode, dry_run, started)
        except (AuthFailed, BudgetExhausted) as exc:
            report.stopped = str(exc)
            logger.error("Run stopped: {error}", error=str(exc))
        except ApiError as exc:
            report.stopped = f"listing the source failed: {exc}"
            logger.error("Run failed: {error}", error=report.stopped)
        except InvalidBooking as exc:
            report.stopped = f"the source returned an unusable listing: {exc}"
            logger.error("Run failed: {error}", error=report.stopped)
        finally:
            self._finish(run, report)
        return report

    def _run(
        self, run: Run, report: SyncReport, mode: Mode, dry_run: bool, started: float
    ) -> None:
        states = self.store.booking_states(self.source.name)
        known = {} if mode is Mode.FULL else self._known_updates(states)
        listing = self.source.list_bookings(known)
        run.listed = (
            len(listing.bookings) + len(listing.cancelled) + len(listing.unchanged_ids)
        )
        run.skipped = len(listing.skipped)
        run.unchanged = len(listing.unchanged_ids)
        self._record_invalid(listing.invalid, report, dry_run)
        report.actions = self.plan(listing, states, dry_run)
        if dry_run:
            return
        deadline = started + self.settings.run_deadline
        for action in report.actions:
            if self.stop_requested.is_set():
                report.stopped = "stop requested"
                break
            if time.monotonic() > deadline:
                report.stopped = "run deadline reached; the rest waits for next run"
                logger.warning("Run deadline reached; stopping this run")
                break
            self._apply(action, run, report)

    def _known_updates(self, states: dict[str, BookingState]) -> dict[str, str | None]:
        return {
            booking_id: state.source_updated_at
            for booking_id, state in states.items()
            if state.error is None
            and state.source_updated_at is not None
            and (
                state.synced_fingerprint == state.seen_fingerprint
                or state.status != "confirmed"
            )
        }

    def plan(
        self, listing: Listing, states: dict[str, BookingState], dry_run: bool
    ) -> list[Action]:
        """Turn a listing and the snapshot into the actions to apply."""
        now = self.now()
        actions: list[Action] = []
        present = set(listing.unchanged_ids)
        present.update(s.booking_id for s in listing.skipped)
        present.update(i.booking_id for i in listing.invalid if i.booking_id)

        for booking in listing.bookings:
            present.add(booking.booking_id)
            action = self._plan_due(booking, states.get(booking.booking_id), now)
            if action is not None:
                actions.append(action)
        for cancelled in listing.cancelled:
            present.add(cancelled.booking_id)
            state = states.get(cancelled.booking_id)
            action = plan_cancel(
                f"{self.source.name}:{cancelled.booking_id}",
                state,
                cancelled.cancelled_at,
            )
            if action is not None:
                actions.append(action)
        actions.extend(self._plan_vanished(listing, states, present, now))
        return actions

    def _plan_due(
        self, booking: Booking, state: BookingState | None, now: datetime
    ) -> Action | None:
        if state is not None and state.error and state.next_retry_at:
            retry_at = state.next_retry_at.replace(
                tzinfo=state.next_retry_at.tzinfo or UTC
            )
            same = state.seen_fingerprint == booking.fingerprint()
            if same and retry_at > now:
                return None
        return plan_booking(booking, state)

    def _plan_vanished(
        self,
        listing: Listing,
        states: dict[str, BookingState],
        present: set[str],
        now: datetime,
    ) -> list[Action]:
        horizon = now - timedelta(days=self.settings.lookback_days)
        actions = []
        for booking_id, state in states.items():
            if booking_id in present or state.remote_state != RemoteState.ACTIVE.value:
                continue
            if not listing.covers(state.host_user_id):
                continue
            slot_end = state.slot_end
            if slot_end is not None and slot_end.replace(tzinfo=UTC) < horizon:
                continue
            action = self._check_vanished(booking_id, state, now)
            if action is not None:
                actions.append(action)
        return actions

    def _check_vanished(
        self, booking_id: str, state: BookingState, now: datetime
    ) -> Action | None:
        fetched = self.source.fetch_booking(booking_id)
        if fetched is None:
            logger.info(
                "Booking {booking} no longer exists in the source", booking=state.key
            )
            return plan_cancel(state.key, state, now)
        if isinstance(fetched, Cancelled):
            return plan_cancel(state.key, state, fetched.cancelled_at)
        if isinstance(fetched, Booking):
            return plan_booking(fetched, state)
        return None

    def _record_invalid(
        self, invalid: list[Invalid], report: SyncReport, dry_run: bool
    ) -> None:
        for item in invalid:
            label = item.booking_id or "(no id)"
            report.failed[label] = item.problem
            logger.error(
                "Event {booking_id} is invalid and was skipped: {problem}",
                booking_id=label,
                problem=item.problem,
            )
            if item.booking_id and not dry_run:
                key = f"{self.source.name}:{item.booking_id}"
                self.store.update_booking(key, status="invalid")
                self.store.record_failure(key, item.problem, self.now())

    def _apply(self, action: Action, run: Run, report: SyncReport) -> None:
        try:
            self.applier.apply(action)
        except (AuthFailed, BudgetExhausted):
            raise
        except BookingSyncError as exc:
            self._fail(action, run, report, str(exc))
            return
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"unexpected response or data: {type(exc).__name__}: {exc}"
            self._fail(action, run, report, problem)
            return
        if action.kind is ActionKind.CREATE:
            run.created += 1
        elif action.kind is ActionKind.UPDATE:
            run.updated += 1
        else:
            run.cancelled += 1

    def _fail(self, action: Action, run: Run, report: SyncReport, problem: str) -> None:
        run.failed += 1
        report.failed[action.key] = problem
        if action.booking is not None:
            self.store.update_booking(
                action.key,
                seen_fingerprint=action.booking.fingerprint(),
                status="confirmed",
                slot_end=action.booking.end,
                host_user_id=action.booking.host_user_id,
            )
        self.store.record_failure(action.key, problem, self.now())
        logger.error(
            "Booking {booking} failed and will be retried: {error}",
            booking=action.key,
            error=problem,
        )

    def _finish(self, run: Run, report: SyncReport) -> None:
        usage = self.client.usage.reset()
        run.requests = usage.requests
        run.tokens = usage.tokens
        run.failed = len(report.failed)
        run.problems = json.dumps(report.failed)
        run.error = report.stopped
        if report.stopped:
            run.outcome = "stopped"
        elif report.failed:
            run.outcome = "partial"
        else:
            run.outcome = "ok"
        self.store.finish_run(run)
        logger.info(
            "Run {run_id} {outcome}: {created} created, {updated} updated, "
            "{cancelled} cancelled, {failed} failed, {requests} Pipedrive requests",
            run_id=run.id,
            outcome=run.outcome,
            created=run.created,
            updated=run.updated,
            cancelled=run.cancelled,
            failed=run.failed,
            requests=run.requests,
        )
