"""The whole path through real processes: flow file → apply → processor → dispatcher → receiver → results."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from processor import records
from processor.devtools.receiver import Receiver, start_receiver
from processor.devtools.stack import WorkerProcess, apply_definitions
from processor.kafka import ensure_topics, make_producer, read_records
from processor.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SIGNING_SECRET = "whsec_" + "c2VjcmV0LWZvci1lbmQtdG8tZW5kLXRlc3Rz"
SECRETS = {"FLOWHOOK_SECRET_E2E_TOKEN": "tok-e2e-123", "FLOWHOOK_SECRET_E2E_SIGNING": SIGNING_SECRET}


def order_flow(port: int) -> dict[str, Any]:
    return {
        "id": "e2e-orders",
        "name": "Placed Order → receiver",
        "status": "live",
        "trigger": {"metric": "Placed Order", "filters": [{"property": "$value", "op": "gte", "value": 50}]},
        "reentry": {"mode": "always"},
        "steps": [{"webhook": {
            "id": "order-hook",
            "url": f"http://127.0.0.1:{port}/orders?key=abc",
            "headers": {"Authorization": "Bearer {{ secrets.E2E_TOKEN }}", "X-Order": "{{ event.OrderId }}"},
            "signing_secret": "{{ secrets.E2E_SIGNING }}",
            "body": {"name": "{{ person.first_name }}", "order_id": "{{ event.OrderId }}",
                     "items": "{{ event.Items }}", "total": "{{ event|lookup:'$value' }}"},
        }}],
    }


def delayed_flow(port: int) -> dict[str, Any]:
    return {
        "id": "e2e-checkout",
        "name": "Started Checkout → wait → receiver",
        "status": "live",
        "trigger": {"metric": "Started Checkout"},
        "steps": [{"delay": "1s"},
                  {"webhook": {"id": "nudge", "url": f"http://127.0.0.1:{port}/nudge",
                               "body": {"email": "{{ person.email|default:'none' }}"}}}],
    }


def event(n: int, value: float) -> dict[str, Any]:
    return {"id": f"evt_{n}", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
            "profile": {"id": f"p_{n % 7}", "first_name": f"Name{n}"},
            "properties": {"OrderId": str(1000 + n), "$value": value, "Items": [{"sku": "A1", "qty": n}]}}


async def produce(settings: Settings, topic: str, values: list[bytes], keys: list[bytes]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        pending = [await producer.send(topic, v, key=k) for v, k in zip(values, keys, strict=True)]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def collect(settings: Settings, topic: str, until: int, timeout_s: float,
                  accept: Any = lambda _r: True) -> list[dict[str, Any]]:
    """Read `topic` until `until` accepted records arrived or the time is up."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    async for record in read_records(settings, topic, follow=True,
                                     stop=lambda: len(found) >= until or time.monotonic() > deadline):
        value = orjson.loads(record.value)
        if accept(value):
            found.append(value)
    return found


async def test_placed_order_reaches_receiver_signed_and_delivered(settings: Settings, tmp_path: Path) -> None:
    """Matching events become one signed delivery each; results and due records match their schemas."""
    receiver = Receiver()
    runner, port = await start_receiver(receiver)
    workers = []
    try:
        await ensure_topics(settings)
        await apply_definitions(settings, [(order_flow(port), "e2e"), (delayed_flow(port), "e2e")])
        workers = [WorkerProcess(role, settings, tmp_path / f"{role}.log", env=SECRETS).start()
                   for role in ("processor", "dispatcher")]
        matching = [event(n, 60.0 + n) for n in range(12)]
        below = [event(100 + n, 10.0) for n in range(3)]
        checkout = {**event(200, 75.0), "metric": "Started Checkout"}
        values = [orjson.dumps(e) for e in [*matching, *below, checkout]] + [b"{not json"]
        keys = [e["profile"]["id"].encode() for e in [*matching, *below, checkout]] + [b"p_bad"]
        await produce(settings, settings.topics.events, values, keys)

        delivered = await collect(settings, settings.topics.results, len(matching) + 1, 90,
                                  lambda r: r.get("outcome") == "delivered")
        nudged = [r for r in delivered if r["flow_id"] == "e2e-checkout"]
        delivered = [r for r in delivered if r["flow_id"] == "e2e-orders"]
        assert [r["event_id"] for r in nudged] == ["evt_200"]
        for worker in workers:
            assert worker.alive, worker.tail()
        assert len({r["delivery_id"] for r in delivered}) == len(matching)
        assert {r["event_id"] for r in delivered} == {e["id"] for e in matching}

        results = await collect(settings, settings.topics.results, 10_000, 3)
        assert all(records.validation_error("result", r) is None for r in results)
        assert all(r["destination"] == f"http://127.0.0.1:{port}/orders" for r in delivered)
        dues = await collect(settings, settings.topics.webhooks, 10_000, 2)
        assert all(records.validation_error("webhook", d) is None for d in dues)
        wakeups = await collect(settings, settings.topics.wakeups, 10_000, 2)
        assert wakeups and all(records.validation_error("wakeup", w) is None for w in wakeups)
        flow_records = await collect(settings, settings.topics.flows, 2, 5)
        assert {f["id"] for f in flow_records} == {"e2e-orders", "e2e-checkout"}
        for flow_record in flow_records:
            assert records.validation_error("flow-record", flow_record) is None
            assert records.validation_error("flow", flow_record["definition"]) is None
        assert b"tok-e2e-123" not in orjson.dumps(results + dues)  # secrets never reach a topic

        verifier = Webhook(SIGNING_SECRET)
        posted = [r for r in receiver.recent if r.path == "/orders"]
        assert posted
        for request in posted:
            assert request.headers["Authorization"] == "Bearer tok-e2e-123"
            verifier.verify(request.body, request.headers)  # raises if the signature is wrong
            body = orjson.loads(request.body)
            assert isinstance(body["items"], list) and isinstance(body["total"], float)
            assert request.headers["X-Order"] == body["order_id"]

        invalid = await collect(settings, settings.topics.events_invalid, 1, 10)
        assert invalid and invalid[0]["source_topic"] == settings.topics.events
        assert records.validation_error("invalid", invalid[0]) is None
    finally:
        for worker in workers:
            worker.stop()
        await runner.cleanup()
