"""Logging: loguru to stderr, stdlib logging routed through it, secrets masked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from loguru import logger

REDACTED = "***"


class SecretRedactor:
    """Replace every known secret value in a log message with ``***``."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        self.secrets.update(value for value in values if len(value) >= 4)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def patch(self, record: Any) -> None:
        record["message"] = self.redact(record["message"])
        record["extra"] = {
            key: self.redact(value) if isinstance(value, str) else value
            for key, value in record["extra"].items()
        }
        exception = record["exception"]
        if exception is not None and exception.value is not None:
            exception.value.args = tuple(
                self.redact(arg) if isinstance(arg, str) else arg
                for arg in exception.value.args
            )


redactor = SecretRedactor()


class InterceptHandler(logging.Handler):
    """Send stdlib log records (httpx, apscheduler) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str = "INFO", json_format: bool = False) -> None:
    """Log to stderr (journald captures it) with secrets masked.

    httpx, httpcore and apscheduler stay at WARNING unless ``level`` is DEBUG.
    ``diagnose`` is off so tracebacks never print local variables.
    """
    logger.remove()
    logger.configure(patcher=redactor.patch)
    logger.add(
        sys.stderr,
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
