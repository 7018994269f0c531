"""Producing a batch's records as whole aiokafka batches, one per topic partition.

Why not `producer.send()` per record: each send costs a future, a partitioner call and an
accumulator lookup, and Faust's table writes add a FutureMessage and its buffer on top;
with about four records per input event that was the processor's largest cost. Here the
records of one input batch are grouped by topic partition (in order) into `BatchBuilder`s
of the same producer Faust uses, so Faust's commit (`producer.flush()` before committing
offsets, faust/transport/consumer.py `_commit_offsets`) still waits for every one of them:
an input offset is only committed once the outputs of its record are acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from processor.partitioner import murmur2

# (topic, partition, base offset of the batch, records in it) once a batch is acknowledged
OnAcked = Callable[[str, int, int, int], None]


class Outbound:
    """Groups records by topic partition and hands each group to the producer as a batch."""

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self._partitions: dict[str, list[int]] = {}  # topic -> its partitions, sorted
        self._groups: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        self._on_failure = on_failure
        self._hashes: dict[bytes, int] = {}  # key -> murmur2 hash, for the batch being built

    async def prepare(self, producer: AIOKafkaProducer, topics: list[str]) -> None:
        """Learn the partitions of the topics records go to by key (waits for metadata)."""
        for topic in topics:
            if topic not in self._partitions:
                self._partitions[topic] = sorted(await producer.partitions_for(topic))

    def partition_for(self, topic: str, key: bytes) -> int:
        """The partition `producer.send` would choose for `key` (aiokafka's default
        partitioner: murmur2 of the key, as the Java client does)."""
        partitions = self._partitions[topic]
        hashed = self._hashes.get(key)
        if hashed is None:  # a run's results share their key (the run id): hash it once
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]

    def add(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        """Queue a record; `partition` None: by key, on a topic given to `prepare`."""
        if partition is None:
            assert key is not None  # every keyless record names its partition
            partition = self.partition_for(topic, key)
        self._groups.setdefault((topic, partition), []).append((key, value))

    async def send(self, producer: AIOKafkaProducer, on_acked: OnAcked | None = None) -> int:
        """Queue every group with the producer (waits only for room, not for acks)."""
        sent = 0
        groups, self._groups = self._groups, {}
        self._hashes.clear()
        for (topic, partition), items in groups.items():
            sent += await self._send_group(producer, topic, partition, items, on_acked)
        return sent

    async def _send_group(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partition: int,
        items: list[tuple[bytes | None, bytes]],
        on_acked: OnAcked | None,
    ) -> int:
        start = 0
        while start < len(items):
            batch = producer.create_batch()
            count = 0
            for key, value in items[start:]:
                if batch.append(timestamp=None, key=key, value=value) is None:
                    break  # full: the rest goes into the next batch
                count += 1
            if count == 0:  # pragma: no cover - a builder always takes its first record
                raise RuntimeError("a record did not fit into an empty producer batch")
            batch.close()
            future = await producer.send_batch(batch, topic, partition=partition)
            future.add_done_callback(self._done_callback(topic, partition, count, on_acked))
            start += count
        return len(items)

    def _done_callback(
        self, topic: str, partition: int, count: int, on_acked: OnAcked | None
    ) -> Callable[[Any], None]:
        def done(future: Any) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                self._on_failure(exc)
            elif on_acked is not None and future.result() is not None:
                on_acked(topic, partition, future.result().offset, count)

        return done
