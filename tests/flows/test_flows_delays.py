"""Klaviyo's time delays and splits: the delay forms, when a run moves on, trigger splits, and a
delay at the end of a flow being skipped."""

from __future__ import annotations

from typing import Any

import pytest

from processor.clock import parse_iso_ms
from processor.flows.delays import delay_until, describe
from processor.flows.loader import check_definition
from processor.flows.model import DelayStep, SplitStep
from tests.engine_helpers import T0, Harness, event, flow, kinds, webhook

HOUR = 3_600_000
MON_2130_UTC = parse_iso_ms("2026-11-30T21:30:00Z")  # a Monday


def delay(spec: Any) -> DelayStep:
    """The DelayStep a flow file's `delay:` value builds."""
    built = flow(steps=[{"delay": spec}, webhook("w")]).steps[0]
    assert isinstance(built, DelayStep)
    return built


def at(spec: Any, now_ms: int, profile: dict[str, Any] | None = None) -> str:
    """When a run reaching `delay: spec` at `now_ms` moves on, as ISO UTC."""
    from processor.clock import iso

    return iso(delay_until(delay(spec), now_ms, profile))


@pytest.mark.parametrize(("spec", "expected"), [
    ({"minutes": 30}, "2026-11-30T22:00:00.000Z"),
    ({"hours": 3}, "2026-12-01T00:30:00.000Z"),
    ({"days": 2}, "2026-12-02T21:30:00.000Z"),
    ("90m", "2026-11-30T23:00:00.000Z"),
    # N calendar days, then until a time of day: Monday 21:30 + 1 day until 09:00 is Tuesday 09:00.
    ({"days": 1, "until": "09:00"}, "2026-12-01T09:00:00.000Z"),
    ({"days": 0, "until": "22:00"}, "2026-11-30T22:00:00.000Z"),
    ({"until": "09:00"}, "2026-12-01T09:00:00.000Z"),
    ({"days": 1, "until": "09:00", "timezone": "Europe/Berlin"}, "2026-12-01T08:00:00.000Z"),
    # Monday 22:30 in Berlin; 2 calendar days later at 07:00 CET is Wednesday 06:00 UTC.
    ({"days": 2, "until": "07:00", "timezone": "Europe/Berlin"}, "2026-12-02T06:00:00.000Z"),
    # Only on weekdays: a delay ending on Saturday waits for Monday (midnight, or the time given).
    ({"days": 5, "weekdays": ["monday", "tue"]}, "2026-12-07T00:00:00.000Z"),
    ({"days": 5, "until": "10:00", "weekdays": ["mon"]}, "2026-12-07T10:00:00.000Z"),
    ({"hours": 1, "weekdays": ["mon", "tue"]}, "2026-11-30T22:30:00.000Z"),
])
def test_delay_forms_move_on_when_klaviyo_would(spec: Any, expected: str) -> None:
    """Minutes, hours, days; N calendar days then until a time; weekdays; fixed zones."""
    assert at(spec, MON_2130_UTC) == expected


def test_profile_time_zone_with_fallback() -> None:
    """timezone: profile reads the profile's own zone ($timezone or location.timezone), else the fallback."""
    spec = {"days": 1, "until": "09:00", "timezone": "profile", "fallback_timezone": "America/New_York"}
    assert at(spec, MON_2130_UTC, {"properties": {"$timezone": "Asia/Tokyo"}}) == "2026-12-02T00:00:00.000Z"
    assert at(spec, MON_2130_UTC, {"location": {"timezone": "Europe/London"}}) == "2026-12-01T09:00:00.000Z"
    assert at(spec, MON_2130_UTC, {"timezone": "Mars/Olympus"}) == "2026-12-01T14:00:00.000Z"
    assert at(spec, MON_2130_UTC, {}) == "2026-12-01T14:00:00.000Z"


@pytest.mark.parametrize(("spec", "message"), [
    ({"hours": 2, "days": 1}, "one unit"),
    ({"hours": 2, "until": "09:00"}, "until goes with days"),
    ({"minutes": 0}, "whole number of minutes"),
    ({"days": 1.5}, "whole number of days"),
    ({"days": 1, "weekdays": ["funday"]}, "not a weekday"),
    ({"days": 1, "weekdays": []}, "at least one weekday"),
    ({"days": 1, "timezone": "Nowhere/City"}, "not a time zone"),
    ({"timezone": "UTC"}, "neither how long nor until when"),
    ({"days": 1, "every": 2}, "unknown field 'every'"),
])
def test_bad_delays_say_what_to_write(spec: Any, message: str) -> None:
    """Each wrong delay is refused with a message naming the fix."""
    definition = {"id": "f", "status": "live", "trigger": {"metric": "M"},
                  "steps": [{"delay": spec}, {"webhook": {"id": "w", "url": "https://e.com"}}]}
    problems = check_definition(definition, source="t.yaml").problems
    assert any(message in p.message for p in problems), [p.message for p in problems]


def test_descriptions_for_preview() -> None:
    """Preview and `flows list` describe each delay form."""
    assert describe(delay({"days": 1, "until": "09:00", "timezone": "profile"})) == (
        "wait 1 day, then until 09:00 in the profile's time zone (else UTC)")
    assert describe(delay({"hours": 3, "weekdays": ["fri", "mon"]})) == "wait 3h on mon/fri only"


def test_trigger_split_reads_the_triggering_event() -> None:
    """trigger_split is a split on the triggering event's properties (Klaviyo's trigger split)."""
    step = {"trigger_split": {"if": [{"property": "Channel", "op": "eq", "value": "app"}],
                              "then": [webhook("app")], "else": [webhook("web")]}}
    h = Harness(flow(steps=[step], reentry={"mode": "always"}))
    split = h.flows.current("f").flow.steps[0]  # type: ignore[union-attr]
    assert isinstance(split, SplitStep) and split.on == "event"
    assert kinds(h.event(event("e1", Channel="app"))) == ["entered", "webhook:app:send", "completed"]
    assert kinds(h.event(event("e2", Channel="web"))) == ["entered", "webhook:web:send", "completed"]


def test_delay_at_the_end_is_skipped_and_warned_about() -> None:
    """A delay with nothing after it does not hold the run (Klaviyo skips it); validate warns."""
    steps = [webhook("w"), {"split": {"if": [{"property": "vip", "op": "eq", "value": True}],
                                      "then": [{"delay": "1d"}], "else": []}}, ]
    h = Harness(flow(steps=[*steps, {"delay": "2d"}]))
    assert kinds(h.event(event("e1"))) == ["entered", "webhook:w:send", "completed"]
    assert h.state.runs == {}
    checked = check_definition({"id": "f", "status": "live", "trigger": {"metric": "M"},
                                "steps": [{"webhook": {"id": "w", "url": "https://e.com"}}, *steps[1:]]},
                               source="t.yaml")
    assert [w.field for w in checked.warnings if "skipped" in w.message] == ["steps[1].split.then[0].delay"]


def test_delay_inside_a_branch_followed_by_steps_still_waits() -> None:
    """A delay at the end of a branch waits when steps follow the split."""
    split = {"split": {"if": [{"property": "vip", "op": "eq", "value": True}], "then": [{"delay": "1h"}]}}
    h = Harness(flow(steps=[split, webhook("after")]))
    h.profile(properties={"vip": True})
    assert kinds(h.event(event("e1"))) == ["entered"]
    assert kinds(h.wake(T0 + HOUR)) == ["webhook:after:send", "completed"]


def test_preview_says_a_final_delay_is_skipped() -> None:
    """`flowhook preview` marks a delay with nothing after it as skipped, and not one that waits."""
    from processor.engine.preview import preview

    split = {"split": {"if": [{"property": "vip", "op": "eq", "value": True}], "then": [{"delay": "1h"}]}}
    lines = preview(flow(steps=[{"delay": "2h"}, webhook("w"), split]), event("e1"),
                    {"id": "p1", "properties": {"vip": True}}).lines
    assert "then wait 2h" in lines
    skipped = "then wait 1h (skipped: nothing follows it, as Klaviyo skips a delay at the end)"
    assert any(line.strip() == skipped for line in lines), lines
