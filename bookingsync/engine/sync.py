"""One sync pass: list the source, plan the changes, apply them one by one."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    Rejected,
)
from bookingsync.models.booking import Booking
from bookingsync.models.state import BookingState, RemoteState, Run
from bookingsync.settings import Settings
from bookingsync.sinks.pipedrive import PipedriveClient
from bookingsync.sources.base import Cancelled, Invalid, Listing, Skipped, Source


class Mode(StrEnum):
    POLL = "poll"
    FULL = "full"


# The safety rail: when at least this many bookings, and more than this share
# of the active ones, vanish from the source at once, nothing is cancelled
# until an admin confirms with `bookingsync sync --force`.
SUSPICIOUS_MIN_VANISHED = 3
SUSPICIOUS_SHARE = 0.5
PAUSE_KEY = "pipedrive_paused_until"
STOP_REQUESTED = "stop requested"
MIN_BUDGET_PAUSE = timedelta(minutes=5)
IDS_PER_LOOKUP = 100


@dataclass
class SyncReport:
    """The outcome of one pass; ``actions`` is the plan in order."""

    run_id: int | None
    actions: list[Action] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    suspicious: str | None = None
    run: Run | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None and self.suspicious is None


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
        self._logged_skips: set[tuple[str, str]] = set()

    def run(
        self,
        mode: Mode = Mode.POLL,
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        force: bool = False,
        since: datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Run one pass.

        ``force`` applies cancellations the safety rail held back. ``since``
        widens the lookback window to bookings that ended after that time (a
        backfill). ``progress(done, total)`` is called after each booking.
        """
        run = self.store.start_run(trigger, mode.value, dry_run)
        report = SyncReport(run.id, run=run)
        self.force = force
        self.progress = progress
        self.lookback_days = self.settings.lookback_days
        if since is not None:
            days = math.ceil((self.now() - since).total_seconds() / 86400)
            self.lookback_days = max(self.lookback_days, days)
        source_settings = self.source.settings
        self.source.settings = source_settings.model_copy(
            update={"lookback_days": self.lookback_days}
        )
        self.client.usage.reset()
        self.applier.resolver.start_run()
        started = time.monotonic()
        try:
            paused = self._budget_pause()
            if paused is not None:
                report.stopped = paused
                logger.warning("Run skipped: {reason}", reason=paused)
            else:
                self._run(run, report, mode, dry_run, started)
        except BudgetExhausted as exc:
            until = self.now() + max(
                MIN_BUDGET_PAUSE, timedelta(seconds=exc.retry_after)
            )
            self.store.set_meta(PAUSE_KEY, until.isoformat())
            report.stopped = (
                f"Pipedrive's daily API token budget is spent; paused until "
                f"{until:%Y-%m-%d %H:%M} UTC"
            )
            logger.error("Run stopped: {error}", error=report.stopped)
        except AuthFailed as exc:
            report.stopped = str(exc)
            logger.error("Run stopped: {error}", error=str(exc))
        except ApiError as exc:
            report.stopped = f"listing the source failed: {exc}"
            logger.error("Run failed: {error}", error=report.stopped)
        except InvalidBooking as exc:
            report.stopped = f"the source returned an unusable listing: {exc}"
            logger.error("Run failed: {error}", error=report.stopped)
        finally:
            self.source.settings = source_settings
            self._finish(run, report)
        return report

    def _budget_pause(self) -> str | None:
        value = self.store.get_meta(PAUSE_KEY)
        if value is None:
            return None
        until = datetime.fromisoformat(value)
        if self.now() >= until:
            self.store.set_meta(PAUSE_KEY, None)
            return None
        return (
            f"Pipedrive's daily API token budget is spent; paused until "
            f"{until:%Y-%m-%d %H:%M} UTC"
        )

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
        self._log_skipped(listing.skipped)
        run.unchanged = len(listing.unchanged_ids)
        self._record_invalid(listing.invalid, report, dry_run, states)
        report.actions = self.plan(listing, states, report)
        if dry_run:
            return
        if mode is Mode.FULL:
            self._verify_activities(states, report.actions)
        deadline = started + self.settings.run_deadline
        for done, action in enumerate(report.actions, start=1):
            if self.stop_requested.is_set():
                report.stopped = STOP_REQUESTED
                break
            if time.monotonic() > deadline:
                report.stopped = "run deadline reached; the rest waits for next run"
                logger.warning("Run deadline reached; stopping this run")
                break
            self._apply(action, run, report)
            if self.progress is not None:
                self.progress(done, len(report.actions))

    def _log_skipped(self, skipped: list[Skipped]) -> None:
        """Log why each event is skipped: INFO the first time, DEBUG after."""
        for item in skipped:
            seen = (item.booking_id, item.reason)
            logger.log(
                "DEBUG" if seen in self._logged_skips else "INFO",
                "Event {booking} skipped: {reason}",
                booking=item.booking_id,
                reason=item.reason,
            )
            self._logged_skips.add(seen)

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
        self, listing: Listing, states: dict[str, BookingState], report: SyncReport
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
        actions.extend(self._plan_vanished(listing, states, present, now, report))
        return actions

    def _plan_due(
        self, booking: Booking, state: BookingState | None, now: datetime
    ) -> Action | None:
        """Plan a booking unless it failed before and its retry is not due.

        A failure without a retry time (a rejection) waits until the booking
        changes or an admin runs ``bookingsync retry``.
        """
        if state is not None and state.error:
            same = state.seen_fingerprint == booking.fingerprint()
            retry_at = state.next_retry_at
            if same and (retry_at is None or retry_at > now):
                return None
        return plan_booking(booking, state)

    def _plan_vanished(
        self,
        listing: Listing,
        states: dict[str, BookingState],
        present: set[str],
        now: datetime,
        report: SyncReport,
    ) -> list[Action]:
        horizon = now - timedelta(days=self.lookback_days)
        watched = [
            state
            for state in states.values()
            if state.remote_state == RemoteState.ACTIVE.value
            and listing.covers(state.host_user_id)
            and (state.slot_end is None or state.slot_end >= horizon)
        ]
        vanished = [state for state in watched if state.booking_id not in present]
        actions: list[Action] = []
        unexplained: list[Action] = []
        for state in vanished:
            action, gone = self._check_vanished(state.booking_id, state, now)
            if action is not None:
                (unexplained if gone else actions).append(action)
        report.suspicious = self._suspicious(len(unexplained), len(watched))
        if report.suspicious and not self.force:
            logger.error(
                "{reason}; none of them was cancelled. If they really were "
                "deleted, run `bookingsync sync --force`",
                reason=report.suspicious,
            )
            return actions
        if report.suspicious:
            logger.warning(
                "{reason}; cancelling them because of --force", reason=report.suspicious
            )
            report.suspicious = None
        return actions + unexplained

    @staticmethod
    def _suspicious(unexplained: int, watched: int) -> str | None:
        """Return why many bookings gone without a trace look like a source fault."""
        if (
            unexplained >= SUSPICIOUS_MIN_VANISHED
            and unexplained > SUSPICIOUS_SHARE * watched
        ):
            return (
                f"{unexplained} of {watched} active bookings vanished from the source "
                "without being cancelled (404 when fetched by id)"
            )
        return None

    def _verify_activities(
        self, states: dict[str, BookingState], actions: list[Action]
    ) -> None:
        """Mark activities deleted in Pipedrive by someone else (full rescans)."""
        planned = {action.key for action in actions}
        mapped = {
            state.activity_id: state
            for state in states.values()
            if state.remote_state == RemoteState.ACTIVE.value
            and state.activity_id is not None
            and state.key not in planned
        }
        ids = sorted(activity_id for activity_id in mapped if activity_id is not None)
        for start in range(0, len(ids), IDS_PER_LOOKUP):
            chunk = ids[start : start + IDS_PER_LOOKUP]
            found = {
                int(item["id"])
                for item in self.client.list_all(
                    "/api/v2/activities", ids=",".join(str(i) for i in chunk)
                )
                if not item.get("is_deleted")
            }
            for activity_id in set(chunk) - found:
                state = mapped[activity_id]
                self.store.update_booking(
                    state.key, remote_state=RemoteState.GONE.value
                )
                logger.warning(
                    "Activity {activity_id} of booking {booking} was deleted in "
                    "Pipedrive; it is recreated only if the booking changes",
                    activity_id=activity_id,
                    booking=state.key,
                )

    def _check_vanished(
        self, booking_id: str, state: BookingState, now: datetime
    ) -> tuple[Action | None, bool]:
        """Fetch a booking missing from the listing; True when it is gone (404)."""
        fetched = self.source.fetch_booking(booking_id)
        if fetched is None:
            logger.info(
                "Booking {booking} no longer exists in the source", booking=state.key
            )
            return plan_cancel(state.key, state, now), True
        if isinstance(fetched, Cancelled):
            return plan_cancel(state.key, state, fetched.cancelled_at), False
        if isinstance(fetched, Booking):
            return plan_booking(fetched, state), False
        return None, False

    def _record_invalid(
        self,
        invalid: list[Invalid],
        report: SyncReport,
        dry_run: bool,
        states: dict[str, BookingState],
    ) -> None:
        for index, item in enumerate(invalid, start=1):
            label = item.booking_id or f"(event without _id, #{index} of this poll)"
            report.failed[label] = item.problem
            known = states.get(item.booking_id) if item.booking_id else None
            # A problem already recorded is logged once, not on every poll.
            repeated = known is not None and known.error == item.problem
            logger.log(
                "DEBUG" if repeated else "ERROR",
                "Event {booking} is invalid and was skipped: {problem}",
                booking=label,
                problem=item.problem,
            )
            if item.booking_id and not dry_run and not repeated:
                key = f"{self.source.name}:{item.booking_id}"
                if known is None:
                    self.store.update_booking(key, status="invalid")
                self.store.record_failure(key, item.problem, self.now(), permanent=True)

    def _apply(self, action: Action, run: Run, report: SyncReport) -> None:
        # The planning snapshot leaves the stored content unloaded; read the
        # whole row now that this booking needs it.
        fresh = self.store.booking_state(action.key)
        if fresh is not None:
            action = replace(action, state=fresh)
        try:
            self.applier.apply(action)
        except (AuthFailed, BudgetExhausted):
            raise
        except Rejected as exc:
            self._fail(action, run, report, str(exc), permanent=True)
            return
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

    def _fail(
        self,
        action: Action,
        run: Run,
        report: SyncReport,
        problem: str,
        permanent: bool = False,
    ) -> None:
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
        self.store.record_failure(action.key, problem, self.now(), permanent=permanent)
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
        if run.dry_run:
            run.outcome = "dry-run"
        elif report.stopped:
            run.outcome = "stopped"
        elif report.suspicious:
            run.outcome = "suspicious"
            run.error = report.suspicious
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
