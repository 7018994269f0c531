"""No input stops a worker: every kind of bad record on every topic a worker reads is copied
to the invalid-input topic (shortened when it would not fit) and the next good one is handled."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError

from processor import constants as c
from processor import records, strict_json
from processor.clock import iso, now_ms
from processor.devtools.sending import read_lines
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.errors import InputError
from processor.kafka import CopyAsideFailed, ensure_topics, make_producer, send_with_retries
from processor.settings import Settings
from tests.dispatch_helpers import ScriptedReceiver, by_delivery, due_record, read_values
from tests.engine_helpers import InProcessEngine, definition, event, flow_record, publish_flows, wait_for
from tests.poison_helpers import (
    OVERSIZED_BYTES,
    Pill,
    Placed,
    check_copies,
    due_pills,
    event_pills,
    flow_pills,
    profile_pills,
    wakeup_pills,
)

# A body that loops 1,000 x 1,000 x 1,000 times: the render budget stops it (mode invalid).
EXPLODING_BODY = {"x": "{% for a in event.Items %}{% for b in event.Items %}{% for d in event.Items %}"
                       "x{% endfor %}{% endfor %}{% endfor %}"}


async def produce_pills(settings: Settings, topic: str, pills: list[Pill]) -> list[Placed]:
    """Produce the pills in order, each acknowledged before the next; where each landed."""
    producer = make_producer(settings, max_request_size=4 * 1024 * 1024)
    await producer.start()
    placed: list[Placed] = []
    try:
        for pill in pills:
            meta = await producer.send_and_wait(topic, pill[2], key=pill[1])
            placed.append((pill, meta.partition, meta.offset))
    finally:
        await producer.stop()
    return placed


async def _copies(settings: Settings, topic: str, count: int) -> list[dict[str, Any]]:
    found = await wait_for(
        settings, settings.topics.events_invalid,
        lambda rs: sum(r["source_topic"] == topic for r in rs) >= count, timeout_s=60,
    )
    return found


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [(kind, value) for kind, _key, value in event_pills(event("e1", OrderId="1")) if kind not in
     ("year 9999", "schema-invalid", "not an object")],
)
def test_strict_json_refuses_each_kind(kind: str, value: bytes | None) -> None:
    """strict_json.loads refuses every kind of bad bytes with a reason, and never raises anything else."""
    with pytest.raises(strict_json.NotUsable) as refused:
        strict_json.loads(value)
    assert str(refused.value), kind


def test_strict_json_accepts_canonical_and_spaced_records() -> None:
    """A good record parses the same whether it is in orjson's form or json.dumps' spaced form."""
    good = event("e1", OrderId="1", Items=[{"sku": "A", "qty": 2}], big=2**63 - 1)
    assert strict_json.loads(orjson.dumps(good)) == good
    assert strict_json.loads(json.dumps(good, indent=1).encode()) == good


def test_invalid_copy_is_shortened_with_size_and_sha256() -> None:
    """A 2 MiB record's copy keeps 64 KiB of it, its size and its SHA-256, and fits easily."""
    value = b"z" * (2 * 1024 * 1024)
    copy = records.as_dict(records.invalid_input(source_topic="t", partition=1, offset=7, key=b"k" * 5000,
                                                 value=value, reason="oversized"))
    assert records.validation_error("invalid", copy) is None
    assert base64.b64decode(copy["value_b64"]) == value[: c.INVALID_COPY_VALUE_BYTES]
    assert copy["value_size"] == len(value) and copy["key_size"] == 5000 and copy["truncated"] is True
    assert copy["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert len(orjson.dumps(copy)) < 100 * 1024


def test_send_refuses_an_oversized_line_with_file_and_line(tmp_path: Path) -> None:
    """`flowhook send` checks the size limit the workers apply, naming file and line."""
    path = tmp_path / "events.jsonl"
    good = orjson.dumps(event("e1", OrderId="1"))
    big = orjson.dumps(event("e2", OrderId="x" * OVERSIZED_BYTES))
    path.write_bytes(good + b"\n" + big + b"\n")
    with pytest.raises(InputError) as error:
        read_lines(path, "event")
    assert f"{path}:2" in str(error.value) and "oversized" in str(error.value)


@pytest.mark.integration
async def test_a_copy_that_cannot_be_written_stops_with_one_line(settings: Settings, broker: Any) -> None:
    """When the invalid-input copy cannot be written, it is retried, then one error names the record."""
    await ensure_topics(settings)
    # Not idempotent: an idempotent producer (on Kafka) never gives up on a batch.
    producer = make_producer(settings, request_timeout_ms=300, retry_backoff_ms=50, enable_idempotence=False)
    await producer.start()
    broker.pause()
    try:
        with pytest.raises(CopyAsideFailed) as failed:
            await send_with_retries(producer, settings.topics.events_invalid, b"k", b"{}",
                                    source="flowhook.events/3/1234", tries=3)
    finally:
        broker.resume()
        await producer.stop()
    message = str(failed.value)
    assert "flowhook.events/3/1234" in message and "3 tries" in message and "\n" not in message
    assert isinstance(failed.value.__cause__, KafkaError | type(None))


# --- the processor ------------------------------------------------------------------------


@pytest.mark.integration
async def test_processor_goes_on_after_every_kind_on_every_topic(settings: Settings) -> None:
    """Events, profiles, wake-ups and flows each get every kind of pill; each is copied aside,
    and afterwards a good event for a profile updated after the pills is handled."""
    hook = {"id": "hook", "url": "http://127.0.0.1:9/hook", "body": {"name": "{{ person.first_name }}"}}
    boom = {"id": "boom", "url": "http://127.0.0.1:9/boom", "body": EXPLODING_BODY}
    await publish_flows(settings, definition("order", steps=[{"webhook": hook}]))
    good = event("e0", pid="p1", OrderId="1")
    topics = settings.topics
    plan = {
        topics.events: event_pills(good),
        topics.profiles: profile_pills({"id": "p1", "first_name": "Ann"}),
        topics.wakeups: wakeup_pills({"profile_id": "p1", "due_at": iso(now_ms()), "reason": "delay"}),
        topics.flows: flow_pills(orjson.loads(flow_record(definition("spare")))),
    }
    async with InProcessEngine(settings):
        placed = {topic: await produce_pills(settings, topic, pills) for topic, pills in plan.items()}
        for topic, pills in placed.items():
            copies = await _copies(settings, topic, len(pills))
            check_copies(copies, pills, topic)
        # The flow whose template explodes and the good records after the pills.
        await produce_pills(settings, topics.flows, [
            ("boom", b"boom", flow_record(definition("boom", steps=[{"webhook": boom}])))])
        await produce_pills(settings, topics.profiles, [
            ("good", b"p1", orjson.dumps({"id": "p1", "first_name": "Zoe"}))])
        await asyncio.sleep(1.0)  # the flow registry is a consumer of its own
        items = [{"sku": str(i)} for i in range(1000)]
        await produce_pills(settings, topics.events, [
            ("good", b"p1", orjson.dumps(event("e-good", pid="p1", OrderId="2", Items=items)))])
        dues = await wait_for(settings, topics.webhooks, lambda rs: len(rs) >= 2, timeout_s=60)
    by_flow = {d["flow_id"]: d for d in dues}
    assert orjson.loads(by_flow["order"]["request"]["body"]) == {"name": "Zoe"}
    assert by_flow["boom"]["mode"] == "invalid" and "render" in by_flow["boom"]["error"]


# --- the dispatcher -----------------------------------------------------------------------


@pytest.mark.integration
async def test_dispatcher_goes_on_after_every_kind_on_first_tries_and_retry_tiers(settings: Settings) -> None:
    """The webhooks topic and a retry tier each get every kind of pill, then a good record each:
    every pill is copied aside, both good records are delivered."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = await ScriptedReceiver().start()
    await ensure_topics(settings)
    tier = settings.topics.retry_tiers[0]
    plan = {
        settings.topics.webhooks: due_pills(due_record(receiver.url("/a"))),
        tier: due_pills(due_record(receiver.url("/b"), attempt=2, not_before_ms=now_ms())),
    }
    good = {
        settings.topics.webhooks: due_record(receiver.url("/good-first")),
        tier: due_record(receiver.url("/good-retry"), attempt=2, not_before_ms=now_ms()),
    }
    placed: dict[str, list[Placed]] = {}
    try:
        for topic, pills in plan.items():
            due = good[topic]
            placed[topic] = await produce_pills(settings, topic, pills)
            await produce_pills(settings, topic, [("good", due["delivery_id"].encode(), orjson.dumps(due))])
        options = DispatcherOptions(drain_idle_s=1.5)
        await asyncio.wait_for(run_dispatcher(settings, options=options), timeout=90)
    finally:
        await receiver.stop()
    copies = await read_values(settings, settings.topics.events_invalid)
    for topic, pills in placed.items():
        check_copies(copies, pills, topic)
    results = by_delivery(await read_values(settings, settings.topics.results))
    for due in good.values():
        assert [r["outcome"] for r in results[due["delivery_id"]]] == ["delivered"]
        assert receiver.hits_for(due["delivery_id"])
