"""A forward HTTP proxy on 127.0.0.1 for the network tests.

It relays requests with an absolute URI to http:// targets, tunnels CONNECT
requests to https:// targets, and records the request line of each. It
relays only to 127.0.0.1, so a test that goes wrong cannot reach another host.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
# Headers about one connection, which a proxy must not pass on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
TUNNEL_IDLE_SECONDS = 30.0


class ForwardProxy:
    """Serve a forward proxy on 127.0.0.1 in a background thread.

    ``requests`` lists the request line of every relayed request, such as
    ``GET http://127.0.0.1:8000/v2/events?limit=10`` or
    ``CONNECT 127.0.0.1:8443``. With ``credentials`` the proxy requires them in
    ``Proxy-Authorization`` and returns 407 without them.
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.requests: list[str] = []
        self.rejected = 0
        self._expected_auth: str | None = None
        if credentials is not None:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            self._expected_auth = f"Basic {token}"
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> ForwardProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _record(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    def _count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _authorized(self) -> bool:
                expected = proxy._expected_auth
                if expected is None or self.headers.get("Proxy-Authorization") == (
                    expected
                ):
                    return True
                proxy._count_rejected()
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_CONNECT(self) -> None:
                if not self._authorized():
                    return
                host, _, port = self.path.rpartition(":")
                if host != LOOPBACK or not port.isdigit():
                    self.send_error(403, "this proxy only relays to 127.0.0.1")
                    return
                proxy._record(f"CONNECT {self.path}")
                upstream = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                with upstream:
                    _pipe(self.connection, upstream)

            def _relay(self) -> None:
                if not self._authorized():
                    return
                target = urlsplit(self.path)
                if target.scheme != "http" or target.hostname != LOOPBACK:
                    self.send_error(403, "this proxy only relays http://127.0.0.1")
                    return
                proxy._record(f"{self.command} {self.path}")

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in HOP_BY_HOP
                }
                path = target.path + (f"?{target.query}" if target.query else "")

                upstream = http.client.HTTPConnection(
                    LOOPBACK, target.port or 80, timeout=30
                )
                try:
                    upstream.request(self.command, path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.send_error(502, f"upstream failed: {exc}")
                    return
                finally:
                    upstream.close()

                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet; ``requests`` records the traffic."""

        return Handler


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until one side closes or both stay idle."""
    sockets = [client, upstream]
    while True:
        readable, _, _ = select.select(sockets, [], [], TUNNEL_IDLE_SECONDS)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            (upstream if source is client else client).sendall(data)
