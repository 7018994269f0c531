"""Replay selection: which dead deliveries go out again, and how they look."""

from __future__ import annotations

import pytest

from processor.dispatch.replay import ReplayFilter, fresh_attempt, parse_time, select
from tests.dispatch_helpers import due_record


def _dead(flow: str = "test-flow") -> dict:
    due = due_record("https://example.com/h", flow_id=flow, attempt=3)
    return {**due, "dead_reason": "retries exhausted after 3 attempts"}


def test_fresh_attempt_keeps_the_id_and_starts_over() -> None:
    """A replayed record is attempt 1 with no not-before or first-attempt time, same delivery id."""
    dead = _dead()
    again = fresh_attempt(dead)
    assert again["delivery_id"] == dead["delivery_id"] and again["attempt"] == 1
    assert again["not_before"] is None and again["first_attempt_at"] is None
    assert "dead_reason" not in again


def test_select_skips_delivered_and_filters_by_flow_and_time() -> None:
    """Only deliveries still dead, of the flow, that died inside the window are chosen, once each."""
    a, b, other = _dead(), _dead(), _dead("other")
    dead = [(1_000, a), (2_000, a), (3_000, b), (4_000, other)]
    latest = {a["delivery_id"]: "dead", b["delivery_id"]: "delivered", other["delivery_id"]: "dead"}
    assert select(dead, latest, ReplayFilter()) == [a, other]
    assert select(dead, latest, ReplayFilter(flow_id="test-flow")) == [a]
    assert select(dead, latest, ReplayFilter(since_ms=2_500)) == [other]
    assert select(dead, latest, ReplayFilter(until_ms=2_000)) == []


def test_parse_time_takes_iso_or_a_duration_ago() -> None:
    """--since/--until accept ISO-8601 or a duration meaning that long ago."""
    assert parse_time("1970-01-01T00:00:10Z") == 10_000
    assert parse_time("2h", now=10_000_000) == 10_000_000 - 7_200_000
    assert parse_time(None) is None
    with pytest.raises(ValueError, match="neither"):
        parse_time("yesterday-ish")
