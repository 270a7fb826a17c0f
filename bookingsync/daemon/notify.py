"""A minimal client of systemd's service notification protocol (sd_notify).

systemd passes a datagram socket in ``$NOTIFY_SOCKET``: a file system path, or
an abstract socket name when it starts with ``@``. Each message is one
datagram of ``KEY=value`` lines. Without the variable every call is a no-op,
so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import os
import socket

from loguru import logger


class Notifier:
    """Send state changes to the service manager, if one is listening."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ) if environ is None else environ
        self.address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(environ)
        self._socket: socket.socket | None = None
        self._failures = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)

    def send(self, **fields: str) -> bool:
        """Send one message and return whether it was sent.

        A failed send is logged, not raised: losing a status line must not
        stop the daemon. systemd notices missing READY or WATCHDOG messages
        on its own, through its start timeout and its watchdog.
        """
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            self._failures += 1
            # Only the first failure and every hundredth after it are logged,
            # because WATCHDOG=1 may fail every few seconds.
            if self._failures % 100 == 1:
                logger.warning(
                    "Sending {fields} to NOTIFY_SOCKET failed ({count} so far): "
                    "{error}",
                    fields=", ".join(fields),
                    count=self._failures,
                    error=str(exc),
                )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of the "@".
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def _watchdog_interval(environ: dict[str, str]) -> float | None:
    """Return the seconds between WATCHDOG=1 pings, or None when not expected.

    systemd sets ``$WATCHDOG_USEC`` to ``WatchdogSec=`` in microseconds, and
    ``$WATCHDOG_PID`` to the process it expects the pings from. Pinging at
    half the timeout leaves room for one late wake-up.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    expected_pid = environ.get("WATCHDOG_PID")
    if expected_pid and expected_pid != str(os.getpid()):
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
