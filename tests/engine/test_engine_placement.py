"""Records keyed by profile id on the "wrong" partition reach the profile's one state.

librdkafka's default partitioner (CRC32) and Kafka's (murmur2) put one key on different
partitions; the engine forwards a record off its profile's home partition through a
co-partitioned repartition topic (engine.placement)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from processor.engine.placement import Placement, home_partition
from processor.settings import Settings
from tests.engine_helpers import InProcessEngine, definition, event, publish_flows, read_json, wait_for

PARTITIONS = 4


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default for a keyed record (`consistent_random`): CRC32 of the key."""
    return zlib.crc32(key) % partitions


def test_home_partition_is_the_default_partitioners_choice() -> None:
    """The home partition is where aiokafka (and the Java client) put a record keyed by the id."""
    choose = DefaultPartitioner()
    for n in range(200):
        pid = f"profile-{n}"
        assert home_partition(pid, 8) == choose(pid.encode(), list(range(8)), list(range(8)))


def test_only_records_off_their_home_partition_are_forwarded_and_counted() -> None:
    """At home: handled in place; elsewhere: one Forward to the repartition topic's home partition."""
    placement = Placement(PARTITIONS, {"t.events": "t.events.repartition"})
    home = home_partition("p1", PARTITIONS)
    assert placement.forward("t.events", home, b"v", "p1") is None
    away = (home + 1) % PARTITIONS
    forward = placement.forward("t.events", away, b"v", "p1")
    assert forward is not None and (forward.topic, forward.partition, forward.key) == (
        "t.events.repartition", home, b"p1")
    assert placement.forward("t.events.repartition", away, b"v", "p1") is None  # placed by construction
    assert placement.counter.by_topic == {"t.events": 1} and placement.counter.total == 1


def _profile(pid: str, n: int) -> bytes:
    return orjson.dumps({"id": pid, "first_name": f"Updated {n}", "time": "2026-11-27T09:00:00Z"})


Placed = list[tuple[bytes, bytes, int]]


def _partitioned(settings: Settings, records: list[tuple[str, bytes, bool]]) -> Placed:
    """(key, value, partition): by CRC32 where asked, else by murmur2 (the home partition)."""
    n = settings.partitions
    return [(pid.encode(), value, crc32_partition(pid.encode(), n) if crc else home_partition(pid, n))
            for pid, value, crc in records]


async def _produce_to_partitions(settings: Settings, topic: str, records: Placed) -> None:
    from processor.kafka import make_producer

    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value, partition in records:
            await producer.send(topic, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_mixed_partitioners_reach_one_state_per_profile(settings: Settings, tmp_path: Path) -> None:
    """Profile updates and events for the same profiles, each half sent by CRC32 and half by murmur2,
    meet in one state: every webhook (sent after a delay) carries the profile's update."""
    settings = settings.with_(partitions=PARTITIONS, store="rocksdb", data_dir=tmp_path / "state")
    body = {"name": "{{ person.first_name|default:'none' }}"}
    await publish_flows(settings, definition("mixed", steps=[
        {"delay": "1s"}, {"webhook": {"id": "hook", "url": "http://127.0.0.1:9/x", "body": body}}]))
    pids = [f"mixed-{n}" for n in range(24)]
    updates = _partitioned(settings, [(p, _profile(p, n), n % 2 == 1) for n, p in enumerate(pids)])
    events = _partitioned(settings, [(p, orjson.dumps(event(f"e-{p}", pid=p)), n % 2 == 0)
                                     for n, p in enumerate(pids)])
    misplaced = sum(1 for (_, _, part), pid in zip(updates + events, pids + pids, strict=True)
                    if part != home_partition(pid, PARTITIONS))
    assert misplaced > 0, "no record off its home partition: nothing to test"
    async with InProcessEngine(settings) as running:
        await _produce_to_partitions(settings, settings.topics.profiles, updates)
        await _produce_to_partitions(settings, settings.topics.events, events)
        dues = await wait_for(settings, settings.topics.webhooks, lambda rs: len(rs) >= len(pids), 60)
        forwarded = running.engine.misplaced.total
    names = {d["profile_id"]: orjson.loads(d["request"]["body"])["name"] for d in dues}
    assert names == {p: f"Updated {n}" for n, p in enumerate(pids)}
    assert forwarded == misplaced
    repartitioned: list[dict[str, Any]] = [
        *await read_json(settings, settings.topics.events_repartition),
        *await read_json(settings, settings.topics.profiles_repartition),
    ]
    assert len(repartitioned) == misplaced
