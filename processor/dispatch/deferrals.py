"""Tries the dispatcher defers instead of making: how long they wait, and their counts.

A deferred try is not an attempt (SPEC §3): it spends no retry, only time. Two causes:
- an open circuit: the try waits until the breaker lets a probe through again (plus jitter,
  so the deferred tries do not all come back at the same moment);
- a secret the request needs is not set (the operator's error): the try waits 5 s, then
  twice as long each time, up to SECRET_WAIT_MAX_MS, until the secret is set (the dispatcher
  restarted with it) or `max_age` ends the delivery.
Counts are kept per cause (`circuit_open`, `secret:<NAME>`); a warning is logged the first
time a cause is seen and then at most once a minute, with the count, never a secret value.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Final

from processor.dispatch.breaker import Breaker
from processor.logs import get_logger
from processor.records.types import WebhookDue

log = get_logger(__name__)

__all__ = ["Deferrals"]

SECRET_WAIT_FIRST_MS: Final = 5_000
SECRET_WAIT_MAX_MS: Final = 60_000
MIN_WAIT_MS: Final = 100
LOG_EVERY_S: Final = 60.0
JITTER: Final = 0.2


class Deferrals:
    """Wait times and counts of deferred tries in one dispatcher."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def breaker_wait_ms(self, breaker: Breaker, now_ms: int) -> int:
        """Until the circuit lets a probe through again, at least a fifth of its open time."""
        opened = breaker.opened_at_ms if breaker.opened_at_ms is not None else now_ms
        remaining = opened + breaker.cooldown_ms - now_ms
        base = max(remaining, breaker.cooldown_ms // 5, MIN_WAIT_MS)
        return int(base * (1 + self.rng.uniform(0, JITTER)))

    def secret_wait_ms(self, due: WebhookDue) -> int:
        """5 s, then doubling with each deferral of this delivery, up to a minute."""
        deferrals = min(due.deferrals or 0, 16)
        wait = min(SECRET_WAIT_FIRST_MS * 2**deferrals, SECRET_WAIT_MAX_MS)
        return int(wait * (1 + self.rng.uniform(-JITTER, JITTER)))

    def count(self, key: str, delivery_id: str, reason: str) -> None:
        """Count one deferred try; log the cause now and then (reason names no secret value)."""
        self.counts[key] += 1
        now = time.monotonic()
        last = self._logged_at.get(key)
        if last is None or now - last >= LOG_EVERY_S:
            self._logged_at[key] = now
            event = "secret_missing" if key.startswith("secret:") else "delivery_deferred"
            log.warning(event, cause=key, reason=reason, deferred_tries=self.counts[key],
                        delivery_id=delivery_id)
