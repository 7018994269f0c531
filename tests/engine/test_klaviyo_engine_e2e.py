"""Klaviyo's delays and splits end to end through the real broker and the processor: a delay in
the profile's own time zone on chosen weekdays, a trigger split, a delay at the end skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from processor.flows.delays import WEEKDAYS
from processor.settings import Settings
from tests.engine_helpers import (
    InProcessEngine,
    definition,
    event,
    event_bytes,
    produce,
    publish_flows,
    read_json,
    wait_for,
    webhook,
)

# Local dates in these two zones are always a day or more apart (UTC+14 and UTC-11).
AHEAD, BEHIND = "Pacific/Kiritimati", "Pacific/Pago_Pago"


def _weekday_ahead(seconds: float) -> str:
    """The weekday in the zone ahead, `seconds` from now; skips the test close to its midnight."""
    local = datetime.now(tz=UTC).astimezone(ZoneInfo(AHEAD))
    if (local + timedelta(seconds=seconds + 30)).date() != local.date():
        pytest.skip("too close to midnight in the zone ahead for a stable weekday")
    return WEEKDAYS[local.weekday()]


def _profile_event(event_id: str, pid: str, zone: str, **props: Any) -> dict[str, Any]:
    record = event(event_id, "Tz Order", pid=pid, **props)
    record["profile"]["properties"] = {"$timezone": zone}
    return record


async def test_profile_time_zone_weekdays_trigger_split_and_trailing_delay(settings: Settings) -> None:
    """Profile zone decides the weekday; a trigger split follows the event; a final delay holds nothing."""
    today_ahead = _weekday_ahead(2)
    tz_delay = {"delay": {"duration": "2s", "weekdays": [today_ahead], "timezone": "profile"}}
    trigger_split = {"trigger_split": {"if": [{"property": "Channel", "op": "eq", "value": "app"}],
                                       "then": [webhook("app")], "else": [webhook("web")]}}
    await publish_flows(
        settings,
        definition("tz", trigger={"metric": "Tz Order"}, steps=[tz_delay, webhook("after-delay")]),
        definition("split", trigger={"metric": "Split Order"}, reentry={"mode": "always"},
                   steps=[trigger_split, {"delay": "3d"}]),
    )
    events = [
        _profile_event("t1", "ahead", AHEAD),
        _profile_event("t2", "behind", BEHIND),
        event("s1", "Split Order", pid="splitter", Channel="app"),
        event("s2", "Split Order", pid="splitter", Channel="web"),
    ]
    async with InProcessEngine(settings):
        await produce(settings, settings.topics.events, [event_bytes(e) for e in events])
        dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 3, timeout_s=40)
        results = await wait_for(settings, settings.topics.results,
                                 lambda rs: sum(r["status"] == "completed" for r in rs) >= 3, timeout_s=20)
        dues = await read_json(settings, settings.topics.webhooks)
    sent = sorted((d["profile_id"], d["flow_id"], d["step_id"]) for d in dues)
    assert sent == [("ahead", "tz", "after-delay"),
                    ("splitter", "split", "app"), ("splitter", "split", "web")]
    completed = sorted((r["profile_id"], r["flow_id"]) for r in results if r["status"] == "completed")
    # The split flow's runs complete at once (the final 3d delay is skipped); "behind" still waits
    # for its next allowed weekday in its own zone.
    assert completed == [("ahead", "tz"), ("splitter", "split"), ("splitter", "split")]
    assert [r["profile_id"] for r in results if r["status"] == "entered" and r["flow_id"] == "tz"].count(
        "behind") == 1
