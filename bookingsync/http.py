"""The HTTP layer shared by the Vyte and Pipedrive clients.

It builds the httpx client (timeouts, proxies, TLS), retries what is safe to
retry, and translates transport errors and HTTP statuses into the exception
tree of ``bookingsync.errors`` at this one boundary.
"""

from __future__ import annotations

import json
import random
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi
import httpx
from loguru import logger

from bookingsync.errors import (
    ApiError,
    AuthFailed,
    BudgetExhausted,
    ConfigurationError,
    NotFound,
    RateLimited,
    Rejected,
    TransientError,
)
from bookingsync.logs import redactor

MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 120.0
# Request headers that carry credentials, so the logs mask their values.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-token"})
PROXY_FIX = "fix BOOKINGSYNC_HTTPS_PROXY, or HTTPS_PROXY, HTTP_PROXY and ALL_PROXY"


def build_timeout(
    connect: float, read: float, write: float, pool: float
) -> httpx.Timeout:
    return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)


def backoff_delay(attempt: int) -> float:
    """Return a capped exponential delay with full jitter for ``attempt`` >= 1."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def proxy_for(url: str, configured: str | None = None) -> str | None:
    """Return the proxy URL for requests to ``url``, or None to connect directly.

    ``configured`` (the ``https_proxy`` setting) wins. Otherwise the proxy comes
    from the environment: ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the scheme of
    ``url``, else ``ALL_PROXY``, unless ``NO_PROXY`` matches the host, as
    urllib reads them (on macOS and Windows it falls back to the system
    settings). httpx reads these variables only when it builds its own
    transport, so they are read here, for a client that is always given one.
    """
    if configured:
        return configured
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    # Like curl, take a proxy given without a scheme as an http:// proxy.
    return proxy if "://" in proxy else f"http://{proxy}"


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Build a context that verifies servers against ``ca_bundle``, else certifi.

    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are not read, so the ``ca_bundle``
    setting is the one way to trust another certificate authority.
    """
    cafile = str(ca_bundle) if ca_bundle is not None else certifi.where()
    return ssl.create_default_context(cafile=cafile)


def build_transport(
    service: str, base_url: str, proxy: str | None, ca_bundle: Path | None
) -> httpx.HTTPTransport:
    """Build the transport to one API: through its proxy, verifying TLS.

    TLS verification is always on (see ``tls_context``). Raises
    ``ConfigurationError`` for a proxy of a scheme httpx cannot use here.
    """
    verify = tls_context(ca_bundle)
    chosen = proxy_for(base_url, proxy)
    if chosen is None:
        return httpx.HTTPTransport(verify=verify)

    parts = urlsplit(chosen)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if parts.password:
        redactor.add([parts.password, unquote(parts.password)])
    problem = (
        f"the proxy {shown!r} for {service} is not a valid http:// or https:// URL"
    )
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError([f"{problem}: {PROXY_FIX}"])
    try:
        transport = httpx.HTTPTransport(verify=verify, proxy=chosen)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ConfigurationError([f"{problem} ({exc}): {PROXY_FIX}"]) from None
    logger.debug(
        "{service} requests go through the proxy {proxy}", service=service, proxy=shown
    )
    return transport


class ApiClient:
    """A JSON API client for one service, with retries and error translation.

    ``credential`` names the setting to check when the service returns 401.
    Headers are never included in messages or logs, so the credentials they
    carry cannot leak through an error, and their values are registered with
    the log redactor in case a server echoes them.

    Requests go through ``proxy``, else the environment's proxy, and verify
    TLS against ``ca_bundle`` (see ``build_transport``). A ``transport`` given
    by the caller replaces all of that: tests use it to answer in-process.
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
        proxy: str | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        redactor.add(
            value
            for name, value in headers.items()
            if name.lower() in CREDENTIAL_HEADERS
        )
        if transport is None:
            transport = build_transport(self.service, base_url, proxy, ca_bundle)
        # trust_env is off because build_transport already read the environment.
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
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
            detail = f"{type(exc).__name__}: {exc}"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                # A certificate the trusted CAs do not sign will not change on
                # a retry: stop and point at the setting that fixes it.
                raise AuthFailed(
                    self.service,
                    method,
                    path,
                    None,
                    detail,
                    credential="BOOKINGSYNC_CA_BUNDLE (the CA certificates trusted)",
                ) from None
            raise TransientError(self.service, method, path, None, detail) from None
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
            snippet = redactor.redact(response.text)[:80].replace("\n", " ")
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
    """Return the API's own error message, or the start of the body.

    Known secrets are masked before the text is cut short, because a server
    or a gateway may echo the request's headers, and the message is logged,
    stored and printed.
    """
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = redactor.redact(response.text.strip().replace("\n", " "))
        return text[:200] or response.reason_phrase
    if isinstance(payload, dict):
        for key in ("error", "message", "error_info"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return redactor.redact(value)[:500]
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
