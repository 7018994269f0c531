"""The Needs-Review queue of manual flows: what waits, what `flowhook held send|cancel` do, and
that moving the flow to live releases nothing already held (the real processor, dispatcher,
broker and a loopback receiver)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from processor.cli.held import held as held_cli
from processor.dispatch.held import HeldDelivery, Selection, cancelled, pending, read_queue, released, select
from processor.dispatch.held import cancel as cancel_held
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.kafka import ensure_topics
from processor.settings import Settings
from tests.dispatch_helpers import ScriptedReceiver, by_delivery, check_results, due_record, read_values
from tests.engine_helpers import (
    InProcessEngine,
    definition,
    event,
    event_bytes,
    produce,
    publish_flows,
    wait_for,
)

pytestmark = pytest.mark.quick_groups


def test_queue_is_what_is_still_held_and_selections_pick_from_it() -> None:
    """Delivered or cancelled deliveries leave the queue; ids, --flow and --all select; nothing by default."""
    a, b = due_record("https://e.com/a", mode="held"), due_record("https://e.com/b", mode="held")
    other = due_record("https://e.com/o", mode="held", flow_id="other")
    gone = due_record("https://e.com/g", mode="held")
    latest = {a["delivery_id"]: "held", gone["delivery_id"]: "delivered"}
    queue = pending([(1, a), (2, b), (3, other), (4, gone), (5, a)], latest)
    assert [(h.delivery_id, h.held_at_ms) for h in queue] == [
        (a["delivery_id"], 5), (b["delivery_id"], 2), (other["delivery_id"], 3)]
    assert select(queue, Selection()) == []
    assert [h.flow_id for h in select(queue, Selection(flow_id="other"))] == ["other"]
    assert len(select(queue, Selection(everything=True))) == 3
    by_id = select(queue, Selection(delivery_ids=(b["delivery_id"],)))
    assert [h.delivery_id for h in by_id] == [b["delivery_id"]]


def test_released_and_cancelled_records() -> None:
    """A release is a fresh first try with mode send and the same id; a cancel is a `cancelled` result."""
    due = due_record("https://e.com/a", mode="held")
    again = released({**due, "attempt": 3, "first_attempt_at": due["created_at"]})
    assert (again["mode"], again["attempt"], again["first_attempt_at"], again["delivery_id"]) == (
        "send", 1, None, due["delivery_id"])
    result = cancelled(due)
    check_results([result])
    assert result["outcome"] == "cancelled" and result["http_status"] is None
    assert HeldDelivery(due, 0).row()["destination"] == "https://e.com/a"


def test_send_or_cancel_needs_a_selection() -> None:
    """`held send` with no ids, --flow or --all is a usage error (exit 2), before any broker is asked."""
    result = CliRunner().invoke(held_cli, ["send"])
    assert result.exit_code == 2 and "--flow" in result.output


async def _dispatch_until(settings: Settings, outcomes: dict[str, str]) -> None:
    """Run the dispatcher until each delivery id's latest result is the given outcome. (An
    idle-based drain ended before the live delivery was sent when the machine was loaded.)"""
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, options=DispatcherOptions(), stop=stop))
    try:
        await wait_for(settings, settings.topics.results, lambda rs: all(
            {r["delivery_id"]: r["outcome"] for r in rs if r.get("type") == "delivery"}.get(d) == o
            for d, o in outcomes.items()), timeout_s=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def _review_flow(url: str, status: str, flow_id: str = "review") -> dict[str, Any]:
    hook = {"webhook": {"id": "crm", "url": url, "body": {"email": "{{ person.email }}"}}}
    return definition(flow_id, status=status, trigger={"metric": f"{flow_id} order"}, steps=[hook])


async def test_held_deliveries_wait_until_sent_or_cancelled(settings: Settings) -> None:
    """Manual: held and queued; going live releases nothing; send keeps the webhook-id; cancel ends it."""
    receiver = await ScriptedReceiver().start()
    url = receiver.url("/crm")
    try:
        await publish_flows(settings, _review_flow(url, "manual"), _review_flow(url, "manual", "other"))
        first = [event("r1", "review order", pid="ann"), event("r2", "review order", pid="bo"),
                 event("o1", "other order", pid="cy")]
        async with InProcessEngine(settings):
            await produce(settings, settings.topics.events, [event_bytes(e) for e in first])
            await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 3)
        await publish_flows(settings, _review_flow(url, "live"), version=2)  # review goes live
        async with InProcessEngine(settings):  # a worker starts once it has read every flow
            later = event("r3", "review order", pid="di")
            await produce(settings, settings.topics.events, [event_bytes(later)])
            dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= 4)
        ids = {d["profile_id"]: d["delivery_id"] for d in dues}
        await _dispatch_until(settings, {ids["ann"]: "held", ids["bo"]: "held", ids["cy"]: "held",
                                         ids["di"]: "delivered"})
        queue = await read_queue(settings)
        assert sorted(h.due["profile_id"] for h in queue) == ["ann", "bo", "cy"]  # live released nothing
        assert [hit.path for hit in receiver.hits] == ["/crm"]  # only di's, sent live

        ann = next(h for h in queue if h.due["profile_id"] == "ann")
        env = {**os.environ, **settings.as_env()}
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", "held", "send", ann.delivery_id, env=env)
        assert await asyncio.wait_for(cli.wait(), 60) == 0
        cancelled_now = await cancel_held(settings, Selection(flow_id="other"))
        assert [h.due["profile_id"] for h in cancelled_now] == ["cy"]
        await _dispatch_until(settings, {ids["ann"]: "delivered", ids["cy"]: "cancelled"})
        left = await read_queue(settings)
        listing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", "held", "list", "--json", "--flow", "review", env=env,
            stdout=asyncio.subprocess.PIPE)
        listed, _ = await asyncio.wait_for(listing.communicate(), 60)
    finally:
        await receiver.stop()
    assert [h.due["profile_id"] for h in left] == ["bo"]
    assert [orjson.loads(line)["profile_id"] for line in listed.splitlines()] == ["bo"]
    ann_hits = receiver.hits_for(ann.delivery_id)
    assert len(ann_hits) == 1 and ann_hits[0].body == b'{"email":"ann@example.com"}'
    results = await read_values(settings, settings.topics.results)
    deliveries = [r for r in results if r["type"] == "delivery"]
    check_results(deliveries)
    final = {d: rs[-1]["outcome"] for d, rs in by_delivery(deliveries).items()}
    by_profile = {d["profile_id"]: final[d["delivery_id"]] for d in dues}
    assert by_profile == {"ann": "delivered", "bo": "held", "cy": "cancelled", "di": "delivered"}


async def test_queue_reads_past_tombstones_and_unreadable_records(settings: Settings) -> None:
    """A tombstone or a non-JSON line on the held or results topic is skipped; the queue is the rest."""
    await ensure_topics(settings, [settings.topics.held, settings.topics.results])
    kept = due_record("https://e.com/k", mode="held")
    await produce(settings, settings.topics.held,
                  [(b"t", None), (b"x", b"not json"), (b"k", orjson.dumps(kept))])
    await produce(settings, settings.topics.results, [(b"t", None), (b"x", b"[1]")])
    queue = await read_queue(settings, idle_s=0.5)
    assert [h.delivery_id for h in queue] == [kept["delivery_id"]]
