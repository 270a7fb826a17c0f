"""A small threaded HTTP server that hosts an in-process API emulator.

The emulators are real HTTP servers bound to 127.0.0.1, so the daemon talks to
them through its ordinary httpx clients and sockets. Each emulator implements
``handle(request) -> Response``; this module owns the socket, the threads and
the request log that tests use to count what reached the API.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from bookingsync.sandbox.faults import FaultAction, FaultPlan


@dataclass(frozen=True)
class Request:
    """One HTTP request as an emulator receives it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str) -> str | None:
        """Return the first value of query parameter ``name``, if present."""
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        """Decode the body as JSON; raises ``ValueError`` on invalid input."""
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class Response:
    """An emulator's reply: status, headers and a body of bytes."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> Response:
        merged = {"Content-Type": "application/json; charset=utf-8"}
        merged.update(headers or {})
        return cls(status, json.dumps(payload).encode("utf-8"), merged)


@dataclass(frozen=True)
class LoggedRequest:
    """A request as recorded in the emulator's log, with the reply status."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int


class Application(Protocol):
    def handle(self, request: Request) -> Response: ...


class EmulatorServer:
    """Serve ``app`` on 127.0.0.1 in a background thread.

    Use it as a context manager, or call ``start()`` and ``stop()``. ``url`` is
    the base URL once started; ``requests`` lists every request served. With
    ``ssl_context`` (a server-side context holding the certificate) it serves
    HTTPS instead of HTTP.
    """

    def __init__(
        self,
        app: Application,
        port: int = 0,
        seed: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.faults = FaultPlan(seed)
        # Called after the application handled a request, before the reply is
        # sent: tests use it to kill a client at an exact moment.
        self.on_handled: Callable[[Request, Response], None] | None = None
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._scheme = "http"
        if ssl_context is not None:
            # The TLS handshake runs in accept(), where a failed one raises
            # an OSError that the server loop ignores.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True
            )
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def writes(self) -> list[LoggedRequest]:
        """Return the logged requests that could change data (not GET/HEAD)."""
        with self._lock:
            return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def _record(self, request: Request, status: int) -> None:
        with self._lock:
            self.requests.append(
                LoggedRequest(request.method, request.path, request.query, status)
            )

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; without this, Nagle
            # and delayed ACKs stall every keep-alive request by about 40 ms.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                fault = server.faults.decide(request.method, request.path)
                if fault is not None and fault.action is FaultAction.STATUS:
                    headers = {"Content-Type": "application/json"}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = fault.retry_after
                    response = Response(fault.status, fault.body(), headers)
                elif fault is not None and fault.action is FaultAction.DROP_BEFORE:
                    response = Response(0, drop_connection=True)
                else:
                    response = server.app.handle(request)
                    if server.on_handled is not None:
                        server.on_handled(request, response)
                server._record(request, response.status)
                if fault is not None and fault.action is FaultAction.DELAY_AFTER:
                    time.sleep(fault.delay_seconds)
                if response.drop_connection or (
                    fault is not None and fault.action is FaultAction.DROP_AFTER
                ):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the emulator quiet; the request log records traffic."""

        return Handler
