"""Retry policy: retryability as data, schedule with jitter, Retry-After and tiers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import constants as c
from processor.dispatch.retry_policy import (
    MAX_RETRY_AFTER_MS,
    Dead,
    FailureKind,
    Retry,
    classify_status,
    parse_retry_after_ms,
    plan_retry,
    schedule_delay_ms,
    tier_for,
)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (404, False),
        (410, False),
        (301, False),
        (302, False),
        (304, False),
    ],
)
def test_status_retryability(status: int, retryable: bool) -> None:
    """408, 429 and 5xx retry; other 4xx and every 3xx do not."""
    kind = classify_status(status)
    assert kind is not None and kind.retryable is retryable
    if not retryable:
        assert kind.outcome == "failed"


def test_2xx_is_no_failure() -> None:
    """Any 2xx is a delivery."""
    assert all(classify_status(s) is None for s in (200, 201, 202, 204, 299))


def test_network_failures_retry_and_policy_refusals_do_not() -> None:
    """Connection trouble is retried; blocked and invalid are final outcomes of their own."""
    for kind in (FailureKind.CONNECT_ERROR, FailureKind.TIMEOUT, FailureKind.CONNECTION_CLOSED):
        assert kind.retryable
    assert (FailureKind.BLOCKED.retryable, FailureKind.BLOCKED.outcome) == (False, "blocked")
    assert (FailureKind.INVALID.retryable, FailureKind.INVALID.outcome) == (False, "invalid")


@given(st.integers(min_value=1, max_value=len(c.DEFAULT_RETRY_SCHEDULE_MS)), st.integers())
def test_default_schedule_jitter_stays_within_20_percent(attempt: int, seed: int) -> None:
    """Each default delay is within ±20% of its nominal value."""
    nominal = c.DEFAULT_RETRY_SCHEDULE_MS[attempt - 1]
    delay = schedule_delay_ms(attempt, None, random.Random(seed))
    assert delay is not None and nominal * 0.8 - 1 <= delay <= nominal * 1.2


def test_flow_schedule_is_used_as_written_and_ends() -> None:
    """A flow's retry_ms is used exactly; after its last entry there is no more delay."""
    assert [schedule_delay_ms(n, [200, 400]) for n in (1, 2, 3)] == [200, 400, None]
    assert schedule_delay_ms(len(c.DEFAULT_RETRY_SCHEDULE_MS) + 1, None) is None


def test_retry_after_seconds_and_dates() -> None:
    """Retry-After is read as seconds or as an HTTP date, and capped."""
    assert parse_retry_after_ms("3", 0) == 3000
    assert parse_retry_after_ms("Thu, 01 Jan 1970 00:00:10 GMT", 4000) == 6000
    assert parse_retry_after_ms("99999999", 0) == MAX_RETRY_AFTER_MS
    assert parse_retry_after_ms("soon", 0) is None and parse_retry_after_ms(None, 0) is None


@pytest.mark.parametrize(
    ("delay", "tier"),
    [
        (0, 1_000),
        (200, 1_000),
        (1_000, 1_000),
        (4_999, 1_000),
        (5_000, 5_000),
        (29_000, 5_000),
        (125_000, 120_000),
        (86_400_000, 3_600_000),
    ],
)
def test_tier_is_largest_not_above_delay(delay: int, tier: int) -> None:
    """A wait goes to the largest tier not above it (the smallest tier for short waits)."""
    assert tier_for(delay) == tier


def test_plan_retry_honours_retry_after_and_max_age() -> None:
    """Retry-After lengthens the wait; a wait past max_age means dead; a used-up schedule too."""
    plan = plan_retry(
        attempt=1, retry_ms=[200], max_age_ms=60_000, first_attempt_ms=0, now_ms=100, retry_after_ms=2_000
    )
    assert plan == Retry(not_before_ms=2_100, tier_delay_ms=1_000)
    late = plan_retry(attempt=1, retry_ms=[200], max_age_ms=1_000, first_attempt_ms=0, now_ms=900)
    assert isinstance(late, Dead) and "max_age" in late.reason
    used = plan_retry(attempt=2, retry_ms=[200], max_age_ms=60_000, first_attempt_ms=0, now_ms=900)
    assert isinstance(used, Dead) and "2 attempts" in used.reason
