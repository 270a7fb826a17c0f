"""Pipedrive client: API v2 (v1 only for users), paced under the burst limit.

The token travels only in the ``x-api-token`` header. Every request is counted
with its estimated token cost, so each run can report what it spent from the
company's daily budget.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from loguru import logger

from bookingsync.errors import ApiError, AuthFailed, BudgetExhausted
from bookingsync.http import ApiClient, build_timeout, error_detail, retry_after_seconds
from bookingsync.settings import Settings

BURST_WINDOW_SECONDS = 2.0
SEARCH_BURST_LIMIT = 10
PAGE_LIMIT = 500


def _is_search(path: str) -> bool:
    return path.endswith("/search") or "/itemSearch" in path


def token_cost(method: str, path: str) -> int:
    """Estimate the daily-budget tokens one request costs (Pipedrive v2 table)."""
    if "/search" in path or "itemSearch" in path:
        return 20
    if method == "DELETE":
        return 3
    if method in ("POST", "PATCH", "PUT"):
        return 5
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return 1 if last.isdigit() or last == "me" else 10


@dataclass
class Usage:
    """Requests and estimated tokens spent, by outcome.

    ``responses`` counts responses by status class ("2xx" to "5xx") over the
    client's lifetime for the metrics file; ``reset()`` leaves it alone.
    """

    requests: int = 0
    tokens: int = 0
    writes: int = 0
    searches: int = 0
    responses: Counter[str] = field(default_factory=Counter)

    def reset(self) -> Usage:
        """Return the per-run totals so far and count them from zero again."""
        snapshot = Usage(self.requests, self.tokens, self.writes, self.searches)
        self.requests = self.tokens = self.writes = self.searches = 0
        return snapshot


class BurstPacer:
    """Keep requests under ``limit`` per rolling two-second window.

    Searches also count against ``search_limit``: Pipedrive allows 10 search
    requests per 2 seconds on every plan, whatever the general limit.
    """

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        search_limit: int = SEARCH_BURST_LIMIT,
    ) -> None:
        self.limit = limit
        self.search_limit = min(search_limit, limit)
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._searches: deque[float] = deque()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def wait(self, is_search: bool = False) -> None:
        """Block until a request may go out, and reserve its slot."""
        with self._lock:
            while True:
                now = self._clock()
                delay = max(
                    self._blocked_until - now,
                    self._delay(self._sent, self.limit, now),
                    self._delay(self._searches, self.search_limit, now)
                    if is_search
                    else 0.0,
                )
                if delay <= 0:
                    self._sent.append(now)
                    if is_search:
                        self._searches.append(now)
                    return
                self._sleep(delay)

    @staticmethod
    def _delay(window: deque[float], limit: int, now: float) -> float:
        while window and now - window[0] >= BURST_WINDOW_SECONDS:
            window.popleft()
        if len(window) < limit:
            return 0.0
        return window[0] + BURST_WINDOW_SECONDS - now

    def restamp_last(self, is_search: bool = False) -> None:
        """Move the last slot to now, when its reply arrived.

        Pipedrive counts a request when it arrives, which is after the slot
        was reserved here. Counting from the reply keeps this window later
        than the server's, never earlier.
        """
        with self._lock:
            now = self._clock()
            for window, used in ((self._sent, True), (self._searches, is_search)):
                if used and window:
                    window[-1] = max(window[-1], now)

    def window_full(self) -> bool:
        with self._lock:
            return self._delay(self._sent, self.limit, self._clock()) > 0

    def block_for(self, seconds: float) -> None:
        """Hold every request back for ``seconds``, as the server requested."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)


class PipedriveClient(ApiClient):
    service = "Pipedrive"
    credential = "BOOKINGSYNC_PIPEDRIVE_API_TOKEN"

    def __init__(self, *args: Any, pacer: BurstPacer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pacer = pacer
        self.usage = Usage()
        self.daily_tokens_left: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> PipedriveClient:
        timeout = build_timeout(
            settings.http_connect_timeout,
            settings.http_read_timeout,
            settings.http_write_timeout,
            settings.http_pool_timeout,
        )
        headers = {
            "x-api-token": settings.pipedrive_api_token.get_secret_value(),
            "Accept": "application/json",
            "User-Agent": "bookingsync",
        }
        return cls(
            settings.pipedrive_base_url,
            headers,
            timeout,
            transport=transport,
            sleep=sleep,
            pacer=BurstPacer(settings.pipedrive_burst_limit, sleep=sleep),
            proxy=settings.https_proxy,
            ca_bundle=settings.ca_bundle,
        )

    def before_request(self, method: str, path: str) -> None:
        self.pacer.wait(is_search=_is_search(path))

    def after_response(self, method: str, path: str, response: httpx.Response) -> None:
        self.usage.requests += 1
        self.usage.responses[f"{response.status_code // 100}xx"] += 1
        if response.status_code != 429:
            self.usage.tokens += token_cost(method, path)
        if method != "GET":
            self.usage.writes += 1
        elif "/search" in path:
            self.usage.searches += 1
        self.pacer.restamp_last(is_search=_is_search(path))
        remaining = response.headers.get("x-ratelimit-remaining")
        if remaining == "0" and not self.pacer.window_full():
            # Our own window has room, so another client spends this token's
            # allowance too: wait as long as the server requests.
            self.pacer.block_for(retry_after_seconds(response, default=2.0))
        daily = response.headers.get("x-daily-ratelimit-token-remaining")
        if daily is not None and daily.isdigit():
            self.daily_tokens_left = int(daily)
        logger.debug(
            "Pipedrive {method} {path} -> {status}",
            method=method,
            path=path,
            status=response.status_code,
        )

    def translate_status(
        self, method: str, path: str, response: httpx.Response
    ) -> ApiError:
        status = response.status_code
        args = (self.service, method, path, status, error_detail(response))
        if status == 429:
            wait = retry_after_seconds(response)
            if response.headers.get("x-daily-ratelimit-token-remaining") == "0":
                return BudgetExhausted(*args, retry_after=wait)
            self.pacer.block_for(wait)
        is_json = "json" in response.headers.get("content-type", "")
        if status == 403 and not is_json:
            # Pipedrive's edge returns an HTML page for an account-wide block.
            return AuthFailed(*args, credential=self.credential)
        return super().translate_status(method, path, response)

    # Reads ---------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        payload = self.request("GET", path, params=_clean(params))
        return payload.get("data") if isinstance(payload, dict) else None

    def list_all(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Yield every item of a v2 list endpoint, following the cursor."""
        params = _clean({**params, "limit": PAGE_LIMIT})
        while True:
            payload = self.request("GET", path, params=params)
            yield from (payload or {}).get("data") or []
            cursor = ((payload or {}).get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def search(self, entity: str, term: str, fields: str) -> list[dict[str, Any]]:
        """Return the items of an exact-match search on ``/api/v2/{entity}/search``."""
        data = self.get(
            f"/api/v2/{entity}/search",
            term=term,
            fields=fields,
            exact_match="true",
            limit=50,
        )
        items = (data or {}).get("items") or []
        return [entry["item"] for entry in items if isinstance(entry, dict)]

    def users(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/users") or [])

    def me(self) -> dict[str, Any]:
        return dict(self.get("/api/v1/users/me") or {})

    # Writes --------------------------------------------------------------

    def create(self, entity: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a new item. Never retried blindly: a repeat could duplicate it."""
        payload = self.request(
            "POST", f"/api/v2/{entity}", body=body, retry_transient=False
        )
        return dict(payload["data"])

    def update(self, entity: str, item_id: int, body: dict[str, Any]) -> dict[str, Any]:
        payload = self.request("PATCH", f"/api/v2/{entity}/{item_id}", body=body)
        return dict(payload["data"])

    def delete(self, entity: str, item_id: int) -> None:
        self.request("DELETE", f"/api/v2/{entity}/{item_id}")


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
