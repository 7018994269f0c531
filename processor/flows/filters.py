"""Filter conditions as pure functions of (profile, event, history, now). Never raises.

The rules for missing properties and mismatched types are written down for users in
docs/filters.md; in short: a missing property fails every condition except the negative
ones (ne, not_contains, not_in, not_exists); numbers written as text compare as numbers;
dates written as ISO-8601 compare as instants; text comparisons are case-insensitive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from processor.clock import parse_iso_ms
from processor.durations import format_duration_ms
from processor.flows.lookup import MISSING, event_value, profile_value
from processor.flows.model import Condition

PROPERTY_OPS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "contains", "not_contains", "in", "not_in", "exists", "not_exists"}
)
HISTORY_OPS = frozenset({"count_eq", "count_gte", "count_lte"})
NEGATIVE_OPS = frozenset({"ne", "not_contains", "not_in", "not_exists"})
ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})


@dataclass(frozen=True)
class FilterContext:
    """Everything a condition may look at.

    `event` is the triggering event record (or None), `history` maps a metric to the times
    (epoch ms, ascending) of that profile's events, `flow_start_ms` is the run's start (its
    triggering event's time) or None before a run exists.
    """

    profile: Mapping[str, Any]
    event: Mapping[str, Any] | None = None
    history: Mapping[str, Sequence[int]] = field(default_factory=dict)
    now_ms: int = 0
    flow_start_ms: int | None = None


def evaluate(conditions: Sequence[Condition], ctx: FilterContext) -> str | None:
    """None when every condition holds, else a short reason naming the first that failed."""
    for condition in conditions:
        try:
            reason = check(condition, ctx)
        except Exception as exc:  # a filter must never take a worker down
            reason = f"{describe(condition)} failed: {type(exc).__name__}"
        if reason is not None:
            return reason
    return None


def check(condition: Condition, ctx: FilterContext) -> str | None:
    """None when `condition` holds in `ctx`, else why not."""
    if condition.is_history:
        return _check_history(condition, ctx)
    return _check_property(condition, ctx)


def describe(condition: Condition) -> str:
    """A condition as users wrote it: "country eq 'US'", "Placed Order count_eq 0 since flow_start"."""
    if condition.is_history:
        text = f"{condition.metric} {condition.op} {condition.value!r}"
        if condition.since:
            return f"{text} since {condition.since}"
        if condition.within_ms is not None:
            return f"{text} within {format_duration_ms(condition.within_ms)}"
        return text
    prefix = "event " if condition.on == "event" else ""
    if condition.op in ("exists", "not_exists"):
        return f"{prefix}{condition.property} {condition.op}"
    return f"{prefix}{condition.property} {condition.op} {condition.value!r}"


# --- history ---------------------------------------------------------------------------


def _check_history(condition: Condition, ctx: FilterContext) -> str | None:
    count = count_events(condition, ctx)
    want = condition.value
    holds = {
        "count_eq": count == want,
        "count_gte": count >= want,
        "count_lte": count <= want,
    }.get(condition.op, False)
    return None if holds else f"{describe(condition)} failed: got {count}"


def count_events(condition: Condition, ctx: FilterContext) -> int:
    """How many of the profile's `metric` events fall in the condition's window.

    `since: flow_start` counts events strictly after the run started, so the triggering
    event itself is never counted; `within` counts the last period up to now.
    """
    times = ctx.history.get(condition.metric or "", ())
    if condition.since == "flow_start":
        start = ctx.flow_start_ms if ctx.flow_start_ms is not None else ctx.now_ms
        return sum(1 for t in times if start < t <= ctx.now_ms)
    if condition.within_ms is not None:
        start = ctx.now_ms - condition.within_ms
        return sum(1 for t in times if start < t <= ctx.now_ms)
    return sum(1 for t in times if t <= ctx.now_ms)


# --- properties ------------------------------------------------------------------------


def _check_property(condition: Condition, ctx: FilterContext) -> str | None:
    actual = _read(condition, ctx)
    if actual is MISSING or actual is None:
        if condition.op in NEGATIVE_OPS:
            return None
        if actual is None:
            return f"{describe(condition)} failed: property is null"
        no_event = condition.on == "event" and ctx.event is None
        return f"{describe(condition)} failed: {'no triggering event' if no_event else 'property missing'}"
    test = _TESTS.get(condition.op)
    if test is not None and test(actual, condition.value):
        return None
    return f"{describe(condition)} failed: got {_short(actual)}"


def _read(condition: Condition, ctx: FilterContext) -> Any:
    name = condition.property or ""
    if condition.on == "event":
        return MISSING if ctx.event is None else event_value(ctx.event, name)
    return profile_value(ctx.profile, name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> float | None:
    """A number, or text that is one ("50", " 12.5 "); booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if not (isinstance(value, float) and math.isnan(value)) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def _instant(value: Any) -> int | None:
    """ISO-8601 text -> epoch ms, else None."""
    if not isinstance(value, str) or len(value) < 10 or not value[:4].isdigit():
        return None
    try:
        return parse_iso_ms(value.strip())
    except ValueError:
        return None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def equals(actual: Any, expected: Any) -> bool:
    """Loose equality as Klaviyo users expect: 50 == "50", True == "true", text ignores case."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        a, b = _boolean(actual), _boolean(expected)
        return a is not None and a == b
    if isinstance(expected, int | float) or isinstance(actual, int | float):
        a_num, b_num = _number(actual), _number(expected)
        return a_num is not None and a_num == b_num
    if isinstance(actual, str) and isinstance(expected, str):
        a_time, b_time = _instant(actual), _instant(expected)
        if a_time is not None and b_time is not None:
            return a_time == b_time
        return actual.strip().casefold() == expected.strip().casefold()
    return bool(actual == expected)


def _order(actual: Any, expected: Any) -> tuple[float, float] | None:
    """Both sides as comparable numbers (numbers, numeric text, or ISO instants)."""
    b_time = _instant(expected)
    if b_time is not None:
        a_time = _instant(actual)
        return None if a_time is None else (float(a_time), float(b_time))
    a_num, b_num = _number(actual), _number(expected)
    if a_num is None or b_num is None:
        return None
    return a_num, b_num


def _compare(op: str) -> Callable[[Any, Any], bool]:
    def test(actual: Any, expected: Any) -> bool:
        pair = _order(actual, expected)
        if pair is None:
            return False
        a, b = pair
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]

    return test


def contains(actual: Any, expected: Any) -> bool:
    """Text contains text (ignoring case); a list contains an equal element."""
    if isinstance(actual, str):
        return str(expected).casefold() in actual.casefold() if not isinstance(expected, bool) else False
    if isinstance(actual, list | tuple):
        return any(equals(item, expected) for item in actual)
    if isinstance(actual, Mapping):
        return isinstance(expected, str) and expected in actual
    return False


def is_in(actual: Any, expected: Any) -> bool:
    """The value equals one of the listed values; a list value shares at least one with them."""
    if not isinstance(expected, list | tuple):
        return False
    if isinstance(actual, list | tuple):
        return any(is_in(item, expected) for item in actual)
    return any(equals(actual, option) for option in expected)


def _exists(actual: Any, _expected: Any) -> bool:
    return not (actual == "" or actual == [] or actual == {})


_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": equals,
    "ne": lambda a, b: not equals(a, b),
    "gt": _compare("gt"),
    "gte": _compare("gte"),
    "lt": _compare("lt"),
    "lte": _compare("lte"),
    "contains": contains,
    "not_contains": lambda a, b: not contains(a, b),
    "in": is_in,
    "not_in": lambda a, b: not is_in(a, b),
    "exists": _exists,
    "not_exists": lambda a, b: not _exists(a, b),
}
