"""Retryability as data, the retry schedule, jitter, Retry-After and tier choice (pure).

A failed attempt is described by a `FailureKind`; whether it is retried, and what outcome it
records when it is not, is data on the kind. `plan_retry` then decides between another try
(at a not-before time, via the retry tier whose delay is the largest one not above the
wait) and `dead`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from processor import constants as c

# Retry-After is honoured, but a receiver cannot park a delivery for longer than this.
MAX_RETRY_AFTER_MS = 3_600_000

__all__ = [
    "MAX_RETRY_AFTER_MS",
    "Dead",
    "FailureKind",
    "Retry",
    "classify_status",
    "parse_retry_after_ms",
    "plan_retry",
    "schedule_delay_ms",
    "tier_for",
]


class FailureKind(enum.Enum):
    """Why an attempt did not deliver; `retryable` and `outcome` say what happens next."""

    CONNECT_ERROR = ("connect_error", True, True)
    TIMEOUT = ("timeout", True, True)
    CONNECTION_CLOSED = ("connection_closed", True, True)
    SERVER_ERROR = ("server_error", True, True)  # 5xx
    REQUEST_TIMEOUT = ("request_timeout", True, True)  # 408
    RATE_LIMITED = ("rate_limited", True, False)  # 429: the receiver is up, just busy
    CLIENT_ERROR = ("client_error", False, False)  # other 4xx
    REDIRECT = ("redirect", False, False)  # 3xx: redirects are never followed
    UNEXPECTED_STATUS = ("unexpected_status", False, False)  # 1xx or beyond 599
    BLOCKED = ("blocked", False, False)
    INVALID = ("invalid", False, False)

    def __init__(self, label: str, retryable: bool, trips_breaker: bool) -> None:
        self.label = label
        self.retryable = retryable
        self.trips_breaker = trips_breaker

    @property
    def outcome(self) -> str:
        """The outcome recorded when this failure is final (not retried)."""
        if self is FailureKind.BLOCKED:
            return "blocked"
        if self is FailureKind.INVALID:
            return "invalid"
        return "failed"


def classify_status(status: int) -> FailureKind | None:
    """None for a 2xx, else the failure kind of an HTTP status."""
    if 200 <= status < 300:
        return None
    if status == 408:
        return FailureKind.REQUEST_TIMEOUT
    if status == 429:
        return FailureKind.RATE_LIMITED
    if 300 <= status < 400:
        return FailureKind.REDIRECT
    if 400 <= status < 500:
        return FailureKind.CLIENT_ERROR
    if 500 <= status < 600:
        return FailureKind.SERVER_ERROR
    return FailureKind.UNEXPECTED_STATUS


def parse_retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A Retry-After header (seconds or an HTTP date) as a wait in ms, capped; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        wait = int(value) * 1000
    else:
        try:
            wait = int(parsedate_to_datetime(value).timestamp() * 1000) - now_ms
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(wait, 0), MAX_RETRY_AFTER_MS)


def schedule_delay_ms(
    attempt: int, retry_ms: list[int] | None, rng: random.Random | None = None
) -> int | None:
    """The wait after try number `attempt` (1-based), or None when the schedule is used up.

    The flow's own `retry_ms` is used as written; the default schedule gets ±20% jitter so
    a burst of failures does not come back as a burst.
    """
    schedule = retry_ms if retry_ms is not None else c.DEFAULT_RETRY_SCHEDULE_MS
    if attempt < 1 or attempt > len(schedule):
        return None
    delay = int(schedule[attempt - 1])
    if retry_ms is None:
        jitter = (rng or random).uniform(-c.RETRY_JITTER, c.RETRY_JITTER)
        delay = int(delay * (1 + jitter))
    return max(delay, 0)


def tier_for(delay_ms: int) -> int:
    """The tier delay for a wait: the largest tier not above it (the smallest for short waits)."""
    fitting = [d for d in c.RETRY_TIER_DELAYS_MS if d <= delay_ms]
    return fitting[-1] if fitting else c.RETRY_TIER_DELAYS_MS[0]


@dataclass(frozen=True)
class Retry:
    """Try again at `not_before_ms`, waiting in the tier of `tier_delay_ms`."""

    not_before_ms: int
    tier_delay_ms: int


@dataclass(frozen=True)
class Dead:
    """No more tries: `reason` says why."""

    reason: str


def plan_retry(
    *,
    attempt: int,
    retry_ms: list[int] | None,
    max_age_ms: int,
    first_attempt_ms: int,
    now_ms: int,
    retry_after_ms: int | None = None,
    rng: random.Random | None = None,
) -> Retry | Dead:
    """After a retryable failure of try `attempt`: when to try again, or why not."""
    delay = schedule_delay_ms(attempt, retry_ms, rng)
    if delay is None:
        return Dead(f"retries exhausted after {attempt} attempts")
    if retry_after_ms is not None:
        delay = max(delay, retry_after_ms)
    not_before = now_ms + delay
    if not_before - first_attempt_ms > max_age_ms:
        return Dead(f"max_age of {max_age_ms} ms reached after {attempt} attempts")
    return Retry(not_before_ms=not_before, tier_delay_ms=tier_for(delay))
