"""The ``bookingsync`` command line.

Exit statuses: 0 success; 1 some bookings failed and are kept for retry;
2 configuration or usage error; 3 another sync holds the lock; 4 the run
stopped early (credentials rejected, daily budget spent, source unreachable);
5 the safety rail held back cancellations (re-run with ``sync --force``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from loguru import logger
from sqlalchemy.engine import make_url

from bookingsync.engine.sync import STOP_REQUESTED
from bookingsync.errors import (
    ApiError,
    BookingSyncError,
    ConfigurationError,
    LockBusy,
)
from bookingsync.logs import configure_logging, logger_format_is_text
from bookingsync.settings import LogFormat, Settings, load_settings

EXIT_OK = 0
EXIT_FAILED_BOOKINGS = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_STOPPED = 4
EXIT_SUSPICIOUS = 5


class Context:
    def __init__(
        self, config: Path | None, log_level: str | None, log_format: str | None
    ):
        self.config = config
        self.log_level = log_level
        self.log_format = log_format

    def settings(self, needs_credentials: bool = True) -> Settings:
        """Load the settings or exit 2 listing every problem.

        Commands that only read local state pass ``needs_credentials=False``:
        an admin running them usually cannot read the daemon's systemd
        credentials, so placeholders stand in for the API secrets.
        """
        overrides: dict[str, Any] = {}
        if not needs_credentials:
            overrides.update(NO_CREDENTIALS)
        if self.log_level:
            overrides["log_level"] = self.log_level
        if self.log_format:
            overrides["log_format"] = self.log_format
        try:
            settings = load_settings(self.config, **overrides)
        except ConfigurationError as exc:
            click.echo(f"bookingsync: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        configure_logging(settings.log_level, settings.log_format is LogFormat.JSON)
        return settings


NO_CREDENTIALS = {"vyte_api_key": "unused", "pipedrive_api_token": "unused"}

pass_context = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings file [default: /etc/bookingsync/bookingsync.toml if present].",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Log level [default: INFO, or BOOKINGSYNC_LOG_LEVEL].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log line format; json suits log shippers [default: text].",
)
@click.version_option(package_name="bookingsync")
@click.pass_context
def main(
    ctx: click.Context,
    config: Path | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Sync bookings from Vyte into Pipedrive CRM."""
    configure_logging("INFO")
    ctx.obj = Context(config, log_level, log_format)


@main.command()
@pass_context
def run(context: Context) -> None:
    """Run the daemon: poll on a schedule until SIGTERM or SIGINT.

    SIGUSR1 runs a sync now. A full rescan runs every
    BOOKINGSYNC_FULL_RESCAN_INTERVAL seconds.
    """
    from bookingsync.daemon.service import Daemon

    settings = context.settings()
    app = _build_app(settings)
    sys.exit(Daemon(app).run())


@main.command()
@click.option(
    "--full", is_flag=True, help="Re-read every event instead of only changed ones."
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan; write nothing to Pipedrive."
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for a sync already in progress before giving up (exit 3).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Cancel bookings even when many vanished from the source at once.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    default=None,
    help="Backfill: also sync bookings that ended after this UTC date "
    "(YYYY-MM-DD), beyond BOOKINGSYNC_LOOKBACK_DAYS.",
)
@pass_context
def sync(
    context: Context,
    full: bool,
    dry_run: bool,
    wait: float,
    force: bool,
    since: datetime | None,
) -> None:
    """Run one sync pass now, then exit.

    Only one sync runs at a time: when the daemon or another `sync` is in
    progress, this waits up to --wait seconds, then exits with status 3.
    SIGTERM or SIGINT finishes the booking in flight and exits 0.

    Exit status 0 when every booking applied, 1 when some failed and are
    kept for retry, 2 on a configuration error, 3 when another sync holds
    the lock, 4 when the run stopped early (a credential rejected, the daily
    budget spent, the source unreachable), 5 when many bookings vanished from
    the source at once and were not cancelled (check, then re-run with --force).
    """
    from bookingsync.engine.sync import Mode

    settings = context.settings()
    app = _build_app(settings)
    mode = Mode.FULL if full or since else Mode.POLL
    _stop_on_signals(app.engine.stop_requested)
    with _progress_reporter(enabled=since is not None) as progress:
        try:
            report = app.sync(
                mode,
                dry_run=dry_run,
                trigger="backfill" if since else "cli",
                wait_seconds=wait,
                force=force,
                since=since.replace(tzinfo=UTC) if since else None,
                progress=progress,
            )
        except LockBusy as exc:
            click.echo(f"bookingsync: {exc}; try again later or pass --wait", err=True)
            sys.exit(EXIT_LOCKED)
        finally:
            app.close()
    if dry_run:
        _print_plan(report.actions)
    _exit_for(report)


def _exit_for(report: Any) -> NoReturn:
    """Print a run's problems and exit with the documented status."""
    # The engine logged each failure already; in JSON mode stderr stays
    # pure JSON lines, in text mode a summary follows the log.
    if logger_format_is_text():
        for key, problem in report.failed.items():
            click.echo(f"failed: {key}: {problem}", err=True)
    if report.stopped == STOP_REQUESTED:
        click.echo(
            "bookingsync: stopped by signal after the booking in flight", err=True
        )
        sys.exit(EXIT_OK)
    if report.stopped:
        click.echo(f"bookingsync: run stopped: {report.stopped}", err=True)
        sys.exit(EXIT_STOPPED)
    if report.suspicious:
        click.echo(
            f"bookingsync: {report.suspicious}; nothing was cancelled. "
            "Check the source, then run `bookingsync sync --force`",
            err=True,
        )
        sys.exit(EXIT_SUSPICIOUS)
    sys.exit(EXIT_FAILED_BOOKINGS if report.failed else EXIT_OK)


@contextmanager
def _progress_reporter(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a progress callback: a bar on a terminal, log lines otherwise."""
    if not enabled:
        yield None
        return
    if sys.stderr.isatty():
        bar: Any = None

        def update_bar(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = click.progressbar(length=total, label="backfill", file=sys.stderr)
                bar.__enter__()
            bar.update(1)

        try:
            yield update_bar
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        return

    def log_line(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            logger.info("Backfill: {done} of {total} bookings", done=done, total=total)

    yield log_line


def _stop_on_signals(stop_requested: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@pass_context
def status(context: Context, as_json: bool) -> None:
    """Show the last runs, their counts and the bookings that are failing.

    Reads the state database only; needs no API credentials. Run it as the
    daemon's user (`sudo -u bookingsync bookingsync status`) so that it finds
    the same database. Exit status 0, or 2 when there is no database.
    """
    from bookingsync.app import open_store
    from bookingsync.status import collect_status, render_status

    settings = context.settings(needs_credentials=False)
    url = make_url(settings.resolved_database_url())
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).exists():
        click.echo(
            f"bookingsync: no state database at {url.database}: no sync has run "
            "as this user yet. Run status as the daemon's user "
            "(sudo -u bookingsync bookingsync status) or set BOOKINGSYNC_DATABASE_URL",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    try:
        store = open_store(settings)
    except ConfigurationError as exc:
        click.echo(f"bookingsync: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    data = collect_status(store)
    data["database"] = shown
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"Database: {shown}\n" + render_status(data))


@main.command()
@pass_context
def check(context: Context) -> None:
    """Validate the settings and reach both APIs.

    Calls GET /v2/auth/test on Vyte and GET /api/v1/users/me on Pipedrive.
    Exit status 0 when both calls succeed, 4 when either fails, 2 on a
    configuration error.
    """
    from bookingsync.sinks.pipedrive import PipedriveClient
    from bookingsync.sources.vyte import VyteClient

    settings = context.settings()
    try:
        vyte = VyteClient.from_settings(settings)
        pipedrive = PipedriveClient.from_settings(settings)
    except ConfigurationError as exc:
        click.echo(f"bookingsync: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo("settings: ok")
    failures = 0
    failures += _probe("Vyte", lambda: vyte.request("GET", "/v2/auth/test"), "name")
    failures += _probe("Pipedrive", pipedrive.me, "email")
    vyte.close()
    pipedrive.close()
    click.echo("verdict: " + ("ready to sync" if not failures else "NOT ready"))
    sys.exit(EXIT_STOPPED if failures else EXIT_OK)


@main.command()
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the emulators running after the demo, until Ctrl-C.",
)
def demo(keep_running: bool) -> None:
    """Run the sync on the built-in sandbox: no credentials, no network."""
    from bookingsync.sandbox.demo import run_demo

    sys.exit(run_demo(keep_running=keep_running))


@main.command()
@pass_context
def trigger(context: Context) -> None:
    """Ask the running daemon to sync now (SIGUSR1), and report the delivery.

    The daemon is found through its pid file in the state directory, else
    through systemd's MainPID of bookingsync.service. Run this as the daemon's
    user or as root. Exit status 0 when the signal was delivered, 4 when no
    daemon runs or the signal is not permitted, 2 on a configuration error.
    """
    from bookingsync.daemon.pidfile import pid_path, trigger_daemon

    settings = context.settings(needs_credentials=False)
    result = trigger_daemon(pid_path(settings))
    if not result.delivered:
        click.echo(
            f"bookingsync: sync request not delivered: {result.message}", err=True
        )
        sys.exit(EXIT_STOPPED)
    click.echo(f"sync requested: {result.message}")


@main.command()
@click.argument("booking_id")
@pass_context
def resync(context: Context, booking_id: str) -> None:
    """Push one booking to Pipedrive again, every field, now.

    BOOKING_ID is the Vyte event id (with or without the "vyte:" prefix).
    Use it after someone edited the activity in Pipedrive by hand. Exit
    status 0 when pushed, 1 when it failed, 2 when the booking is unknown.
    """
    from bookingsync.engine.admin import UnknownBooking
    from bookingsync.engine.admin import resync as resync_booking

    app = _build_app(context.settings())
    try:
        app.lock.acquire(wait_seconds=60)
        report = resync_booking(app.engine, booking_id)
    except UnknownBooking as exc:
        click.echo(f"bookingsync: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except LockBusy as exc:
        click.echo(f"bookingsync: {exc}; try again later", err=True)
        sys.exit(EXIT_LOCKED)
    except BookingSyncError as exc:
        click.echo(f"bookingsync: resync of {booking_id} failed: {exc}", err=True)
        sys.exit(EXIT_FAILED_BOOKINGS)
    finally:
        app.lock.release()
        app.close()
    for action in report.actions:
        click.echo(f"resynced: {action.describe()}")


@main.command()
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for a sync already in progress.",
)
@pass_context
def retry(context: Context, wait: float) -> None:
    """Retry every booking recorded as failed, now, then exit.

    Rejected bookings normally wait until they change; this sends them
    again. Exit statuses are those of `bookingsync sync`.
    """
    from bookingsync.engine.admin import make_failures_due

    app = _build_app(context.settings())
    count = make_failures_due(app.store, app.engine.now())
    click.echo(f"retrying {count} failed booking(s)")
    try:
        report = app.sync(trigger="retry", wait_seconds=wait)
    except LockBusy as exc:
        click.echo(f"bookingsync: {exc}; try again later", err=True)
        sys.exit(EXIT_LOCKED)
    finally:
        app.close()
    _exit_for(report)


@main.command()
@click.argument("email")
@pass_context
def forget(context: Context, email: str) -> None:
    """Erase what the local state stores about EMAIL (data protection).

    Removes the person's mapping and clears every stored booking snapshot,
    error and run note that mentions the address. Pipedrive is not changed:
    erase the person there too. A booking that still names the person in
    Vyte brings the data back when it next changes.
    """
    from bookingsync.app import open_store
    from bookingsync.engine.admin import forget_email

    settings = context.settings(needs_credentials=False)
    if "@" not in email:
        click.echo(f"bookingsync: {email!r} is not an email address", err=True)
        sys.exit(EXIT_USAGE)
    store = open_store(settings)
    result = forget_email(store, email)
    store.engine.dispose()
    click.echo(
        f"forgot {email}: {result.persons} person mapping(s), "
        f"{result.bookings} booking snapshot(s), {result.runs} run record(s)"
    )


def _build_app(settings: Settings) -> Any:
    from bookingsync.app import App

    try:
        return App.build(settings)
    except ConfigurationError as exc:
        click.echo(f"bookingsync: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _probe(name: str, call: Any, field: str) -> int:
    try:
        result = call()
    except ApiError as exc:
        click.echo(f"{name}: FAILED: {exc}")
        return 1
    shown = result.get(field) if isinstance(result, dict) else None
    click.echo(f"{name}: ok" + (f" ({shown})" if shown else ""))
    return 0


def _print_plan(actions: list[Any]) -> None:
    if not actions:
        click.echo("plan: nothing to do")
        return
    click.echo(f"plan: {len(actions)} change(s), nothing written (dry run)")
    for action in actions:
        click.echo("  " + action.describe())
