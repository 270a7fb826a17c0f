"""Logging: loguru to stderr, stdlib logging routed through it, secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

from loguru import logger

REDACTED = "***"
# A token in a query string, as Pipedrive's older API documentation sent it.
QUERY_TOKEN = re.compile(r"(api_token=)[^&\s\"']+")


class SecretRedactor:
    """Replace every known secret value in log output with ``***``."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if len(value) < 4:
                continue
            self.secrets.add(value)
            # The form a JSON log line contains when the secret has a quote,
            # a backslash or a control character in it.
            self.secrets.add(json.dumps(value)[1:-1])

    def redact(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return QUERY_TOKEN.sub(r"\1" + REDACTED, text)

    def patch(self, record: Any) -> None:
        """Mask the message and the extra fields of a record for every sink."""
        record["message"] = self.redact(record["message"])
        record["extra"] = {
            key: self.redact(value) if isinstance(value, str) else value
            for key, value in record["extra"].items()
        }


redactor = SecretRedactor()


def write_redacted(message: str) -> None:
    """Write a formatted log line to stderr with every secret masked.

    The line already contains the traceback, chained exceptions included, or
    the whole JSON record, so nothing reaches stderr unmasked.
    """
    sys.stderr.write(redactor.redact(message))


class InterceptHandler(logging.Handler):
    """Send stdlib log records (httpx, apscheduler) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


_FORMAT = {"json": False}


def logger_format_is_text() -> bool:
    """Tell whether log lines are plain text (not ``--log-format json``)."""
    return not _FORMAT["json"]


def configure_logging(level: str = "INFO", json_format: bool = False) -> None:
    """Log to stderr (journald captures it) with secrets masked.

    httpx, httpcore and apscheduler stay at WARNING unless ``level`` is DEBUG.
    ``diagnose`` is off so tracebacks never print local variables.
    """
    _FORMAT["json"] = json_format
    logger.remove()
    logger.configure(patcher=redactor.patch)
    logger.add(
        write_redacted,
        level=level,
        serialize=json_format,
        backtrace=False,
        diagnose=False,
        format="{time:YYYY-MM-DD HH:mm:ss} {level:<7} {message}",
    )
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    library_level = logging.DEBUG if level in ("DEBUG", "TRACE") else logging.WARNING
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(library_level)
