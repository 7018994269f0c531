"""Filter conditions: every op, history windows, and the missing/mismatch rules of docs/filters.md."""

from __future__ import annotations

from typing import Any

import pytest

from processor.flows.filters import FilterContext, count_events, evaluate
from processor.flows.model import Condition

PROFILE = {
    "id": "p_42", "email": "shah@example.com", "first_name": "Shah", "phone_number": "+15551234567",
    "properties": {"country": "US", "vip": True, "age": "41", "tags": ["gold", "Early"], "score": 7.5,
                   "signup": "2026-01-15T00:00:00Z", "empty": "", "nothing": None,
                   "Favorite Color": "Red"},
}
EVENT = {"id": "evt_1", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
         "properties": {"$value": 129.5, "Channel": "web", "Items": ["A1", "B2"], "OrderId": "1001"}}
DAY = 86_400_000
NOW = 1_800_000_000_000


def ctx(**changes: Any) -> FilterContext:
    """A context around PROFILE and EVENT, at NOW."""
    values: dict[str, Any] = {"profile": PROFILE, "event": EVENT, "history": {}, "now_ms": NOW,
                              "flow_start_ms": None}
    values.update(changes)
    return FilterContext(**values)


def holds(op: str, prop: str, value: Any = None, on: str = "profile") -> bool:
    """Whether one property condition holds in the default context."""
    return evaluate([Condition(op=op, property=prop, value=value, on=on)], ctx()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("op", "prop", "value", "expected"), [
    ("eq", "country", "US", True),
    ("eq", "country", "us", True),
    ("eq", "country", "DE", False),
    ("ne", "country", "DE", True),
    ("eq", "vip", True, True),
    ("eq", "vip", "true", True),
    ("eq", "age", 41, True),
    ("gt", "age", 40, True),
    ("lte", "score", 7.5, True),
    ("lt", "score", "7", False),
    ("gt", "signup", "2026-01-01", True),
    ("lt", "signup", "2026-01-01T00:00:00+00:00", False),
    ("gt", "country", 5, False),
    ("gt", "vip", 0, False),
    ("contains", "email", "EXAMPLE", True),
    ("contains", "tags", "gold", True),
    ("contains", "tags", "early", True),
    ("not_contains", "tags", "silver", True),
    ("in", "country", ["CA", "US"], True),
    ("in", "tags", ["silver", "gold"], True),
    ("not_in", "country", ["CA", "MX"], True),
    ("exists", "first_name", None, True),
    ("exists", "$phone_number", None, True),
    ("exists", "empty", None, False),
    ("not_exists", "nothing", None, True),
    ("eq", "Favorite Color", "red", True),
])
def test_property_ops(op: str, prop: str, value: Any, expected: bool) -> None:
    """Each op compares the way docs/filters.md says: numbers from text, dates, case-insensitive text."""
    assert holds(op, prop, value) is expected


@pytest.mark.parametrize(("op", "expected"), [
    ("eq", False), ("gt", False), ("contains", False), ("in", False), ("exists", False),
    ("ne", True), ("not_contains", True), ("not_in", True), ("not_exists", True),
])
def test_missing_property_fails_all_but_negative_ops(op: str, expected: bool) -> None:
    """A missing property fails every condition except ne, not_contains, not_in and not_exists."""
    value = ["x"] if op in ("in", "not_in") else (None if "exists" in op else "x")
    assert holds(op, "no_such_property", value) is expected


def test_dollar_twins_in_custom_properties() -> None:
    """`city` finds `$city` in properties (and the other way round); the exact name wins."""
    profile = {"id": "p", "properties": {"$city": "Berlin", "region": "BE", "$region": "other"}}
    ctx_ = ctx(profile=profile)
    assert evaluate([Condition(op="eq", property="city", value="Berlin")], ctx_) is None
    assert evaluate([Condition(op="eq", property="$region", value="other")], ctx_) is None
    assert evaluate([Condition(op="eq", property="region", value="BE")], ctx_) is None


def test_event_conditions_read_the_triggering_event() -> None:
    """on=event reads the event's properties and $event_id, $time, metric."""
    assert holds("gte", "$value", 50, on="event")
    assert holds("eq", "metric", "Placed Order", on="event")
    assert holds("eq", "$event_id", "evt_1", on="event")
    assert holds("contains", "Items", "A1", on="event")
    assert not holds("eq", "country", "US", on="event")
    reason = evaluate([Condition(op="eq", property="Channel", value="web", on="event")], ctx(event=None))
    assert reason is not None and "no triggering event" in reason


def test_reason_names_the_failed_condition_and_value() -> None:
    """The reason says which condition failed and what the profile had."""
    conditions = [Condition(op="eq", property="country", value="US"),
                  Condition(op="eq", property="vip", value=False)]
    assert evaluate(conditions, ctx()) == "vip eq False failed: got True"
    missing = evaluate([Condition(op="eq", property="city", value="Berlin")], ctx())
    assert missing == "city eq 'Berlin' failed: property missing"


def test_evaluate_never_raises_on_odd_data() -> None:
    """Any profile shape, even nonsense, yields a reason rather than an exception."""
    odd = {"properties": "not a mapping", "country": {"nested": [1, {"x": float("nan")}]}}
    conditions = [Condition(op=op, property="country", value=v)
                  for op, v in (("eq", "US"), ("gt", 5), ("contains", "x"), ("in", ["US"]))]
    for condition in conditions:
        assert evaluate([condition], ctx(profile=odd)) is not None
    assert evaluate([Condition(op="bogus", property="country", value=1)], ctx()) is not None


def history(*days_ago: float) -> dict[str, list[int]]:
    """A history of Placed Order events that many days before NOW."""
    return {"Placed Order": sorted(int(NOW - d * DAY) for d in days_ago)}


def test_history_since_flow_start_excludes_the_trigger() -> None:
    """since flow_start counts events strictly after the run's start, never the triggering one."""
    start = NOW - 2 * DAY
    cond = Condition(op="count_eq", metric="Placed Order", value=0, since="flow_start")
    assert evaluate([cond], ctx(history=history(2, 5), flow_start_ms=start)) is None
    reason = evaluate([cond], ctx(history=history(2, 1), flow_start_ms=start))
    assert reason == "Placed Order count_eq 0 since flow_start failed: got 1"


def test_history_within_a_period_and_all_time() -> None:
    """within counts the period up to now; neither counts everything up to now."""
    hist = history(1, 10, 40, -1)  # -1: an event after now is not counted
    within = Condition(op="count_gte", metric="Placed Order", value=2, within_ms=30 * DAY)
    assert count_events(within, ctx(history=hist)) == 2
    assert evaluate([within], ctx(history=hist)) is None
    ever = Condition(op="count_lte", metric="Placed Order", value=2)
    assert count_events(ever, ctx(history=hist)) == 3
    assert evaluate([ever], ctx(history=hist)) == "Placed Order count_lte 2 failed: got 3"


def test_no_conditions_hold() -> None:
    """An empty list of conditions holds."""
    assert evaluate([], ctx()) is None
