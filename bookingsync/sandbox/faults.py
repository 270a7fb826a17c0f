"""Fault injection for the emulators: error statuses, latency, dropped connections.

A ``FaultPlan`` is attached to an ``EmulatorServer``. Each rule matches some
requests (by method and path prefix) and fires on chosen request numbers or
at random with a fixed seed, so a failing test run can be replayed.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from enum import StrEnum


class FaultAction(StrEnum):
    STATUS = "status"  # Reply with ``status`` without handling the request.
    DROP_BEFORE = "drop_before"  # Close the connection; nothing was handled.
    DROP_AFTER = "drop_after"  # Handle the request, then close without a reply.
    DELAY_AFTER = "delay_after"  # Handle it, then wait before replying.


@dataclass
class FaultRule:
    action: FaultAction
    status: int = 503
    rate: float = 0.0
    nth: frozenset[int] = frozenset()
    methods: frozenset[str] | None = None
    path_prefix: str = ""
    delay_seconds: float = 0.0
    retry_after: str | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return path.startswith(self.path_prefix)


@dataclass(frozen=True)
class Fault:
    """The decision of a rule for one request."""

    action: FaultAction
    status: int
    delay_seconds: float
    retry_after: str | None

    def body(self) -> bytes:
        messages = {429: "Request over limit", 503: "Service unavailable"}
        message = messages.get(self.status, "Injected fault")
        return json.dumps({"success": False, "error": message}).encode()


class FaultPlan:
    """The fault rules of one emulator, applied in order; the first hit wins."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            hit: FaultRule | None = None
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                rule.seen += 1
                fires = rule.seen in rule.nth or (
                    rule.rate > 0 and self._random.random() < rule.rate
                )
                if fires and hit is None:
                    rule.fired += 1
                    hit = rule
            if hit is None:
                return None
            return Fault(hit.action, hit.status, hit.delay_seconds, hit.retry_after)
