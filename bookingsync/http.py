"""The HTTP layer shared by the Vyte and Pipedrive clients.

It builds the httpx client (timeouts, proxies, TLS), retries what is safe to
retry, and translates transport errors and HTTP statuses into the exception
tree of ``bookingsync.errors`` at this one boundary.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from loguru import logger

from bookingsync.errors import (
    ApiError,
    AuthFailed,
    BudgetExhausted,
    NotFound,
    RateLimited,
    Rejected,
    TransientError,
)

MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 120.0


def build_timeout(
    connect: float, read: float, write: float, pool: float
) -> httpx.Timeout:
    return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)


def backoff_delay(attempt: int) -> float:
    """Return a capped exponential delay with full jitter for ``attempt`` >= 1."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


class ApiClient:
    """A JSON API client for one service, with retries and error translation.

    ``credential`` names the setting to check when the service returns 401.
    Headers are never included in messages or logs, so the credentials they
    carry cannot leak through an error.
    """

    service = "API"
    credential = "the credentials"

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self._sleep = sleep
        self._max_attempts = max_attempts

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        retry_transient: bool = True,
    ) -> Any:
        """Send a request and return the decoded JSON body.

        Transient failures are retried when ``retry_transient`` is true, which
        callers set only for requests that are safe to repeat. A 429 is always
        retried after its wait, because the server did not process the request.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._send_once(method, path, params, body)
            except RateLimited as exc:
                # A spent daily budget only comes back after the reset.
                retryable = not isinstance(exc, BudgetExhausted)
                if not self._should_retry(attempt, exc, retryable=retryable):
                    raise
                delay = min(exc.retry_after, RETRY_AFTER_CAP_SECONDS)
            except TransientError as exc:
                if not self._should_retry(attempt, exc, retryable=retry_transient):
                    raise
                delay = backoff_delay(attempt)
            self._sleep(delay)

    def _should_retry(self, attempt: int, exc: ApiError, *, retryable: bool) -> bool:
        if not retryable or attempt >= self._max_attempts:
            return False
        logger.warning(
            "{service} request failed, retrying (attempt {attempt} of {max}): {error}",
            service=self.service,
            attempt=attempt,
            max=self._max_attempts,
            error=str(exc),
        )
        return True

    def _send_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
    ) -> Any:
        self.before_request(method, path)
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(
                self.service, method, path, None, f"timed out ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(
                self.service, method, path, None, f"{type(exc).__name__}: {exc}"
            ) from None
        self.after_response(method, path, response)
        if response.is_success:
            return self._decode(method, path, response)
        raise self.translate_status(method, path, response)

    def before_request(self, method: str, path: str) -> None:
        """Hook for pacing; the base class sends at once."""

    def after_response(self, method: str, path: str, response: httpx.Response) -> None:
        """Hook for accounting; the base class does nothing."""

    def _decode(self, method: str, path: str, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = response.text[:80].replace("\n", " ")
            raise TransientError(
                self.service,
                method,
                path,
                response.status_code,
                f"response is not valid JSON (starts with {snippet!r})",
            ) from None

    def translate_status(
        self, method: str, path: str, response: httpx.Response
    ) -> ApiError:
        """Turn an error response into the matching exception."""
        status = response.status_code
        detail = error_detail(response)
        args = (self.service, method, path, status, detail)
        if status == 429:
            return RateLimited(*args, retry_after=retry_after_seconds(response))
        if status >= 500:
            return TransientError(*args)
        if status in (404, 410):
            return NotFound(*args)
        if status in (401, 402):
            return AuthFailed(*args, credential=self.credential)
        return Rejected(*args)


def error_detail(response: httpx.Response) -> str:
    """Return the API's own error message, or the start of the body."""
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip().replace("\n", " ")
        return text[:200] or response.reason_phrase
    if isinstance(payload, dict):
        for key in ("error", "message", "error_info"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value[:500]
    return response.reason_phrase


def retry_after_seconds(response: httpx.Response, default: float = 2.0) -> float:
    """Read the wait from ``Retry-After`` or Pipedrive's ``x-ratelimit-reset``."""
    for header in ("retry-after", "x-ratelimit-reset"):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            continue
    return default
