"""Reading topics for the tools: `flowhook results` (only what was asked for), and the
whole-topic reads that replay and the Needs-Review queue make (`read_dues`, `latest_outcomes`).

- `--since` seeks every partition to the first record at or after that time (Kafka's
  offsets-for-times) instead of reading from the start (the embedded broker answers that
  lookup with the partition's start, so there records before `since` are read and skipped);
- `--until` skips records written at or after that time (record timestamps, i.e. when the
  dispatcher or processor wrote them), and stops reading a partition once its records are
  well past it (`UNTIL_SLACK_MS`).
- `--delivery ID` reads only the partition that the delivery id's key maps to: every record
  of one delivery is keyed by its id.
Reading ends when every partition reached `--until`, when `limit` records matched, or when
the topic has been idle for `idle_s` (unless following).

A record that is not a JSON object (a tombstone, a hand-written line) is skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.kafka import ReadEnd, make_reader, read_records
from processor.logs import get_logger
from processor.partitioner import murmur2
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["Selection", "latest_outcomes", "read_dues", "read_results"]

# Write times of records from several producers are close to, not exactly in, offset order:
# a partition is left once a record is this far past `--until`, not at the first one past it.
UNTIL_SLACK_MS = 60_000


@dataclass(frozen=True)
class Selection:
    """Which result records to read."""

    flow_id: str | None = None
    delivery_id: str | None = None
    outcomes: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.flow_id is not None and record.get("flow_id") != self.flow_id:
            return False
        if self.delivery_id is not None and record.get("delivery_id") != self.delivery_id:
            return False
        return not self.outcomes or record.get("outcome") in self.outcomes


async def read_results(
    settings: Settings, selection: Selection, *, idle_s: float = 2.0, follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    """(raw value, decoded record) of every matching result record, in partition order."""
    reader = make_reader(settings)
    await reader.start()
    try:
        tps = await _partitions(reader, settings.topics.results, selection.delivery_id)
        reader.assign(tps)
        await _seek(reader, tps, selection.since_ms)
        async for item in _matching(reader, tps, selection, idle_s, follow, stop):
            yield item
    finally:
        await reader.stop()


async def _partitions(reader: AIOKafkaConsumer, topic: str, delivery_id: str | None) -> list[TopicPartition]:
    partitions = reader.partitions_for_topic(topic)
    if partitions is None:
        await reader.topics()  # fetch metadata
        partitions = reader.partitions_for_topic(topic) or set()
    ordered = sorted(partitions)
    if delivery_id is not None and ordered:
        # The key is the delivery id; Kafka's default partitioner, as every producer of results uses.
        return [TopicPartition(topic, ordered[(murmur2(delivery_id.encode()) & 0x7FFFFFFF) % len(ordered)])]
    return [TopicPartition(topic, p) for p in ordered]


async def _seek(reader: AIOKafkaConsumer, tps: list[TopicPartition], since_ms: int | None) -> None:
    if since_ms is None:
        await reader.seek_to_beginning(*tps)
        return
    found = await reader.offsets_for_times(dict.fromkeys(tps, since_ms))
    ends = await reader.end_offsets(tps)
    for tp in tps:
        at = found.get(tp)
        # No record at or after `since` in this partition: start at its end (nothing to read).
        reader.seek(tp, at.offset if at is not None else ends[tp])


async def _matching(
    reader: AIOKafkaConsumer, tps: list[TopicPartition], selection: Selection, idle_s: float,
    follow: bool, stop: Callable[[], bool] | None,
) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    done: set[TopicPartition] = set()  # partitions past `until`
    matched, end = 0, ReadEnd(idle_s, follow, stop)
    while len(done) < len(tps):
        batch = await reader.getmany(timeout_ms=200, max_records=5000)
        for tp, records in batch.items():
            for record in records:
                if selection.until_ms is not None and record.timestamp >= selection.until_ms:
                    if record.timestamp >= selection.until_ms + UNTIL_SLACK_MS:
                        done.add(tp)
                        reader.pause(tp)
                        break
                    continue
                if selection.since_ms is not None and record.timestamp < selection.since_ms:
                    continue  # a broker whose time index is coarse (the embedded one) seeks early
                value = _decode(record.value)
                if value is None or not selection.matches(value):
                    continue
                yield record.value, value
                matched += 1
                if selection.limit is not None and matched >= selection.limit:
                    return
        if end.reached(bool(batch)):
            return


def _decode(value: bytes | None) -> dict[str, Any] | None:
    try:
        record = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# --- whole topics, until idle ----------------------------------------------------------


async def read_dues(settings: Settings, topics: list[str], idle_s: float) -> list[tuple[int, dict[str, Any]]]:
    """(record timestamp ms, record) of every webhook-due record on `topics` (dead-letter,
    held, webhooks, retry tiers), topic after topic, each in partition order."""
    found = []
    for topic in topics:
        async for record in read_records(settings, topic, idle_s=idle_s):
            value = _decode(record.value)
            if value is None:
                log.warning("record_unreadable", topic=topic, partition=record.partition,
                            offset=record.offset)
            elif isinstance(value.get("delivery_id"), str):
                found.append((record.timestamp, value))
    return found


async def latest_outcomes(settings: Settings, idle_s: float) -> tuple[dict[str, str], dict[str, int]]:
    """The latest outcome of every delivery on the results topic, and when it was recorded (ms)."""
    latest: dict[str, str] = {}
    at: dict[str, int] = {}
    async for record in read_records(settings, settings.topics.results, idle_s=idle_s):
        value = _decode(record.value)
        if value is not None and value.get("type") == "delivery":
            latest[value["delivery_id"]] = value["outcome"]
            at[value["delivery_id"]] = record.timestamp
    return latest, at
