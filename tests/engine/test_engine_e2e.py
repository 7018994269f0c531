"""Every trigger kind, step kind, status and re-entry mode end to end through the real broker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from processor import records
from processor.clock import iso, now_ms
from processor.engine import faust_compat
from processor.engine.app import FETCH_MAX_WAIT_MS, run_processor
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

pytestmark = pytest.mark.integration


def _by(records_: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records_:
        out.setdefault(r[field], []).append(r)
    return out


async def test_run_processor_turns_a_metric_event_into_a_webhook_due_record(settings: Settings) -> None:
    """The demo path: a published metric flow plus one event gives one webhook-due record."""

    await publish_flows(settings, definition("order", steps=[webhook("catalog")]))
    stop = asyncio.Event()
    task = asyncio.create_task(run_processor(settings, stop))
    try:
        await produce(
            settings, settings.topics.events, [event_bytes(event("e1", pid="p_42", OrderId="1001"))]
        )
        dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert len(dues) == 1
    due = dues[0]
    assert records.validation_error("webhook", due) is None
    assert (due["flow_id"], due["step_id"], due["profile_id"], due["mode"]) == (
        "order",
        "catalog",
        "p_42",
        "send",
    )
    assert orjson.loads(due["request"]["body"]) == {"email": "p_42@example.com", "order": "1001"}


def _birthday_in(seconds: float) -> dict[str, Any]:
    """A date-property trigger on today's date whose firing is `seconds` from now."""
    now = datetime.now(tz=UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    offset_ms = int((now - midnight).total_seconds() * 1000 + seconds * 1000)
    return {
        "date_property": {
            "property": "birthday",
            "offset": f"{offset_ms}ms",
            "at": "00:00",
            "timezone": "UTC",
        }
    }


def _flows() -> list[dict[str, Any]]:
    vip_split = {
        "split": {
            "if": [{"property": "vip", "op": "eq", "value": True}],
            "then": [webhook("vip")],
            "else": [webhook("regular")],
        }
    }
    gift_split = {
        "split": {"on": "event", "if": [{"property": "Gift", "op": "exists"}], "then": [webhook("gift")]}
    }
    return [
        definition(
            "metric",
            trigger={"metric": "Placed Order", "filters": [{"property": "$value", "op": "gte", "value": 50}]},
        ),
        definition("list", trigger={"list": "L1"}),
        definition("segment", trigger={"segment": "S1"}),
        # 15 s: the flow must still be ahead of the clock once the worker is up on a busy machine.
        definition("bday", trigger=_birthday_in(15)),
        definition("delayed", trigger={"metric": "Delayed"}, steps=[{"delay": "1s"}, vip_split, gift_split]),
        definition("draft", status="draft", trigger={"metric": "Draft"}),
        definition("manual", status="manual", trigger={"metric": "Manual"}),
        definition("once", trigger={"metric": "Once"}, reentry={"mode": "once"}),
        definition("always", trigger={"metric": "Always"}, reentry={"mode": "always"}),
        definition("per", trigger={"metric": "Per"}, reentry={"mode": "once_per", "period": "1d"}),
        definition(
            "filtered",
            trigger={"metric": "Filtered"},
            profile_filters=[{"property": "country", "op": "eq", "value": "US"}],
        ),
    ]


def _events() -> list[dict[str, Any]]:
    t0 = now_ms() - 3 * 86_400_000
    vip = {
        **event("d1", "Delayed", pid="vip", Gift="card"),
        "profile": {"id": "vip", "properties": {"vip": True}},
    }
    return [
        event("m1", pid="big", **{"$value": 60}),
        event("m2", pid="small", **{"$value": 10}),
        event("m1", pid="big", **{"$value": 60}),  # replayed: no second run
        event("l1", "Subscribed to List", pid="lister", list_id="L1"),
        event("l2", "Subscribed to List", pid="other-list", list_id="L2"),
        event("s1", "Added to Segment", pid="segmented", segment_id="S1"),
        vip,
        event("d2", "Delayed", pid="plain"),
        event("x1", "Draft", pid="drafted"),
        event("h1", "Manual", pid="held"),
        event("o1", "Once", pid="r"),
        event("o2", "Once", pid="r"),
        event("a1", "Always", pid="r"),
        event("a2", "Always", pid="r"),
        event("p1", "Per", pid="r", at_ms=t0),
        event("p2", "Per", pid="r", at_ms=t0 + 3_600_000),
        event("p3", "Per", pid="r", at_ms=t0 + 2 * 86_400_000),
        event("f1", "Filtered", pid="abroad"),
    ]


async def test_every_trigger_step_status_and_reentry_mode(settings: Settings) -> None:
    """One worker, many flows: each behaviour shows in the webhook-due and run result records."""
    await publish_flows(settings, *_flows())
    async with InProcessEngine(settings):
        profiles = [
            (
                b"bday",
                orjson.dumps(
                    {"id": "bday", "properties": {"birthday": datetime.now(tz=UTC).date().isoformat()}}
                ),
            )
        ]
        await produce(settings, settings.topics.profiles, [*profiles, (b"bad", b'{"first_name": "no id"}')])
        await produce(settings, settings.topics.events, [event_bytes(e) for e in _events()])
        await produce(settings, settings.topics.events, [(b"junk", b"not json at all")])
        started = time.monotonic()
        # 13 expected below; the birthday one comes last, through a wake-up.
        dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 13, timeout_s=40)
        print(f"webhook-due records: {len(dues)} after {time.monotonic() - started:.1f}s")
        results = await read_json(settings, settings.topics.results)
        invalid = await read_json(settings, settings.topics.events_invalid)
        wakeups = await read_json(settings, settings.topics.wakeups)
    assert {(w["profile_id"], w["reason"]) for w in wakeups} >= {("vip", "delay"), ("bday", "date_property")}
    by_profile = _by(dues, "profile_id")
    steps = {
        pid: sorted(f"{d['flow_id']}/{d['step_id']}/{d['mode']}" for d in ds)
        for pid, ds in by_profile.items()
    }
    assert steps == {
        "big": ["metric/hook/send"],
        "lister": ["list/hook/send"],
        "segmented": ["segment/hook/send"],
        "bday": ["bday/hook/send"],
        "vip": ["delayed/gift/send", "delayed/vip/send"],
        "plain": ["delayed/regular/send"],
        "held": ["manual/hook/held"],
        "r": ["always/hook/send"] * 2 + ["once/hook/send"] + ["per/hook/send"] * 2,
    }
    assert all(records.validation_error("webhook", d) is None for d in dues)
    assert all(records.validation_error("result", r) is None for r in results)
    exited = [r for r in results if r["status"] == "exited"]
    assert [(r["profile_id"], r["flow_id"]) for r in exited] == [("abroad", "filtered")]
    assert "country" in exited[0]["reason"]
    entered = [r for r in results if r["status"] == "entered"]
    assert len(entered) == len({r["run_id"] for r in entered}) == len(dues) - 1  # vip's run has two webhooks
    assert {r["source_topic"].rsplit(".", 1)[-1] for r in invalid} == {"events", "profiles"}
    assert all(records.validation_error("invalid", r) is None for r in invalid)
    delayed = by_profile["plain"][0]
    assert delayed["due_at"] > iso(now_ms() - 60_000)


async def test_flow_edits_take_effect_without_restart(settings: Settings) -> None:
    """Flows published, edited or removed while the worker runs take effect; runs keep their version."""
    await publish_flows(
        settings,
        definition("edit", trigger={"metric": "Edit"}, steps=[{"delay": "2s"}, webhook("old")]),
        definition("gone", trigger={"metric": "Gone"}),
    )
    async with InProcessEngine(settings) as worker:
        await produce(settings, settings.topics.events, [event_bytes(event("e1", "Edit", pid="pinned"))])
        await produce(settings, settings.topics.profiles, [(b"cake", orjson.dumps(_cake_profile()))])
        await wait_for(settings, settings.topics.results, lambda rs: len(rs) >= 1)
        await publish_flows(
            settings, definition("edit", trigger={"metric": "Edit"}, steps=[webhook("new")]), version=2
        )
        await publish_flows(settings, definition("bday", trigger=_birthday_in(4)))
        await produce(settings, settings.topics.flows, [(b"gone", None)])
        await asyncio.sleep(1.5)  # the registry follows the flows topic
        later = [event("e2", "Edit", pid="fresh"), event("g1", "Gone", pid="fresh")]
        await produce(settings, settings.topics.events, [event_bytes(e) for e in later])
        dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 3, timeout_s=20)
        await asyncio.sleep(0.5)
        dues = await read_json(settings, settings.topics.webhooks)
        # Records reach the agent without Faust's 1.5 s fetch wait (see app.FETCH_MAX_WAIT_MS).
        assert faust_compat.fetch_wait_ms(worker.engine.app) == FETCH_MAX_WAIT_MS
    got = sorted((d["profile_id"], d["flow_id"], d["step_id"], d["flow_version"]) for d in dues)
    assert got == [("cake", "bday", "hook", 1), ("fresh", "edit", "new", 2), ("pinned", "edit", "old", 1)]


def _cake_profile() -> dict[str, Any]:
    return {"id": "cake", "properties": {"birthday": datetime.now(tz=UTC).date().isoformat()}}
