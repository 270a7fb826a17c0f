"""The exceptions of bookingsync, translated at the API boundaries.

::

    BookingSyncError
    ├── ConfigurationError      settings invalid; nothing can run
    ├── InvalidBooking          one source event cannot be mapped
    ├── LockBusy                another sync holds the lock
    └── ApiError                an HTTP API failed (carries the service name)
        ├── TransientError      network fault, timeout or 5xx: safe to retry
        │   └── RateLimited     429; ``retry_after`` seconds to wait
        │       └── BudgetExhausted   the daily token budget is spent
        ├── NotFound            404 or 410: the remote item is gone
        ├── Rejected            400, 403, 422: this request will not succeed
        └── AuthFailed          401, 402, account-wide 403: stop the run

Messages never contain credentials: requests carry them in headers only, and
the messages quote the method and path, never the headers.
"""

from __future__ import annotations


class BookingSyncError(Exception):
    """Base of every error bookingsync raises on purpose."""


class ConfigurationError(BookingSyncError):
    """One or more settings are missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration:\n{lines}")


class InvalidBooking(BookingSyncError):
    """A source event that cannot be turned into a booking."""

    def __init__(self, booking_id: str | None, problem: str) -> None:
        self.booking_id = booking_id
        self.problem = problem
        super().__init__(f"event {booking_id!r}: {problem}")


class LockBusy(BookingSyncError):
    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another sync is in progress ({holder})")


class ApiError(BookingSyncError):
    """An HTTP API call that failed; ``status`` is None for network faults."""

    def __init__(
        self,
        service: str,
        method: str,
        path: str,
        status: int | None,
        detail: str,
    ) -> None:
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        shown = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{service} {method} {path}: {shown}: {detail}")


class TransientError(ApiError):
    """A failure that may succeed when repeated later."""


class RateLimited(TransientError):
    def __init__(self, *args: object, retry_after: float) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.retry_after = retry_after


class BudgetExhausted(RateLimited):
    """Pipedrive's daily token budget is spent; the run must stop."""


class NotFound(ApiError):
    """The remote item does not exist, or was deleted or merged."""


class Rejected(ApiError):
    """The API rejected the request; repeating it unchanged will not help."""


class AuthFailed(ApiError):
    """A credential is invalid or the account is closed; stop the run."""

    def __init__(self, *args: object, credential: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.credential = credential

    def __str__(self) -> str:
        return f"{super().__str__()} (check {self.credential})"
