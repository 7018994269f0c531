"""Seeking the processor's input partitions back to their committed offsets, also where
nothing is committed yet.

During a rebalance Faust discards the records it fetched while its flow was stopped, then
seeks every assigned partition back to its committed offset (`Consumer.perform_seek`, via
the consumer thread's `seek_to_committed`). aiokafka's `seek_to_committed` only moves a
partition whose committed offset is above 0 (`if offset and offset > 0`), so a partition
with no commit yet (a new consumer group, a partition written to for the first time) stays
past the discarded records and they are never processed. Seen on Apache Kafka: the first
events of two partitions were lost when a second processor joined the group while they were
being fetched (tests/test_crash_repeats.py, about one run in five on a loaded machine).

The fix: after seeking to the committed offsets, seek the input partitions that have none
to their beginning, which is what `auto_offset_reset="earliest"` means for them. Changelog
and other internal partitions are left alone: Faust positions those itself for recovery.

Checked against faust-streaming 0.15.3 (`AIOKafkaConsumerThread.seek_to_committed` calls
the aiokafka consumer's through `call_thread`; `_ensure_consumer` is private) and aiokafka
0.14.0 (`AIOKafkaConsumer.seek_to_committed`). `tests/test_engine_rewind.py` pins the
aiokafka behaviour this works around and the fix itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

__all__ = ["install", "seek_to_committed_or_beginning"]


async def seek_to_committed_or_beginning(
    consumer: AIOKafkaConsumer, rewind_topics: Collection[str]
) -> Mapping[TopicPartition, int | None]:
    """Seek every assigned partition to its committed offset; partitions of `rewind_topics`
    without one (None or 0) go to their beginning. Returns the committed offsets."""
    committed: Mapping[TopicPartition, int | None] = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in committed.items() if tp.topic in rewind_topics and not offset]
    if uncommitted:
        await consumer.seek_to_beginning(*uncommitted)
    return committed


def install(rewind_topics: Collection[str]) -> None:
    """Make Faust's consumer thread seek uncommitted partitions of `rewind_topics` to their
    beginning whenever it seeks to the committed offsets (one processor per process)."""
    topics = frozenset(rewind_topics)

    async def seek_to_committed(self: Any) -> Mapping[TopicPartition, int | None]:
        consumer = self._ensure_consumer()  # private in faust-streaming 0.15.3: the aiokafka consumer
        result: Mapping[TopicPartition, int | None] = await self.call_thread(
            seek_to_committed_or_beginning, consumer, topics
        )
        return result

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
