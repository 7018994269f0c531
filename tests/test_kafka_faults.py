"""A 3-node Kafka cluster (replication 3, min ISR 2) losing a broker mid-stream loses nothing.

Real processes throughout: the Kafka nodes, a processor and a dispatcher, a loopback
receiver. kill -9 of the broker that leads the most partitions, and SIGSTOP of a broker for
15 s, each while deliveries (with delays in flight) are under way: every due webhook still
ends delivered. The counts of lost and repeated deliveries are printed for the report.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.devtools.kafka_runner import KafkaCluster
from processor.devtools.receiver import Receiver
from processor.kafka import make_admin, make_producer, read_records
from processor.settings import Settings
from tests.stack_helpers import worker_stack

pytestmark = pytest.mark.kafka3


def _flow(port: int) -> dict[str, Any]:
    return {"id": "faults", "name": "order → delay → receiver", "status": "live",
            "trigger": {"metric": "Placed Order"}, "reentry": {"mode": "always"},
            "steps": [{"delay": "2s"},
                      {"webhook": {"id": "hook", "url": f"http://127.0.0.1:{port}/faults",
                                   "body": {"order": "{{ event.OrderId }}"}}}]}


def _event(n: int) -> tuple[bytes, bytes]:
    pid = f"fault-{n % 400}"
    record = {"id": f"evt-{n}", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
              "profile": {"id": pid}, "properties": {"OrderId": str(n)}}
    return pid.encode(), orjson.dumps(record)


async def _produce(settings: Settings, records: list[tuple[bytes, bytes]], per_second: int) -> None:
    """Produce at about `per_second`, so the fault hits while records still arrive."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for start in range(0, len(records), per_second // 10):
            for key, value in records[start:start + per_second // 10]:
                await producer.send(settings.topics.events, value, key=key)
            await asyncio.sleep(0.1)
        await producer.flush()
    finally:
        await producer.stop()


async def busiest_leader(settings: Settings) -> int:
    """The node id that leads the most partitions (Flowhook's topics and Kafka's own)."""
    admin = make_admin(settings, "flowhook-test")
    await admin.start()
    try:
        described = await admin.describe_topics(await admin.list_topics())
    finally:
        await admin.close()
    leaders = Counter(p["leader"] for t in described for p in t["partitions"] if p["leader"] >= 0)
    return leaders.most_common(1)[0][0]


async def _until(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def _run_with_fault(settings: Settings, tmp_path: Path, count: int, fault: Any) -> tuple[int, int]:
    """Deliver `count` webhooks, calling `fault()` once a fifth have arrived; (lost, repeats)."""
    receiver = Receiver()
    async with worker_stack(settings, tmp_path, lambda port: [_flow(port)], receiver) as workers:
        producing = asyncio.create_task(_produce(settings, [_event(n) for n in range(count)], 400))
        assert await _until(lambda: receiver.total >= count // 5, 120), workers[0].tail()
        await fault()
        await producing
        delivered = await _delivered_events(settings, count, 240)
    lost = count - len(delivered)
    repeats = receiver.total - len(receiver.seen_ids)
    return lost, repeats


async def _delivered_events(settings: Settings, count: int, timeout_s: float) -> set[str]:
    """Event ids with a `delivered` result, read until all `count` are there or the time is up
    (repeated results are counted once)."""
    found: set[str] = set()
    deadline = time.monotonic() + timeout_s
    async for record in read_records(settings, settings.topics.results, follow=True,
                                     stop=lambda: len(found) >= count or time.monotonic() > deadline):
        value = orjson.loads(record.value)
        if value.get("outcome") == "delivered":
            found.add(value["event_id"])
    return found


@pytest.mark.timeout(420)
async def test_kill_9_of_the_busiest_leader_loses_nothing(settings: Settings, broker: KafkaCluster,
                                                          tmp_path: Path) -> None:
    """kill -9 of the broker leading the most partitions during 2,000 deliveries (delays in flight)."""
    assert settings.replication == 3 and settings.min_isr == 2
    killed: list[int] = []

    async def kill_busiest() -> None:
        node_id = await busiest_leader(settings)
        killed.append(node_id)
        broker.kill(node_id - 1)

    try:
        lost, repeats = await _run_with_fault(settings, tmp_path, 2_000, kill_busiest)
    finally:
        for node_id in killed:
            broker.restart(node_id - 1)
        await asyncio.to_thread(broker.wait_ready, 120)
    print(f"kill -9 of node {killed}: 2000 deliveries, lost {lost}, repeated {repeats}")
    assert killed and lost == 0


@pytest.mark.timeout(420)
async def test_sigstop_of_a_broker_for_15_seconds_loses_nothing(settings: Settings, broker: KafkaCluster,
                                                                tmp_path: Path) -> None:
    """SIGSTOP of the busiest leader for 15 s mid-stream, then SIGCONT: every due webhook delivered."""
    paused: list[int] = []

    async def pause_busiest() -> None:
        node_id = await busiest_leader(settings)
        paused.append(node_id)
        broker.pause(node_id - 1)
        try:
            await asyncio.sleep(15)
        finally:
            broker.resume(node_id - 1)

    lost, repeats = await _run_with_fault(settings, tmp_path, 1_000, pause_busiest)
    print(f"SIGSTOP of node {paused} for 15 s: 1000 deliveries, lost {lost}, repeated {repeats}")
    assert paused and lost == 0
