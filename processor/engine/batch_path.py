"""The agent's batch path: Faust's buffered records through `engine.batch` and out again.

Per batch of input records (what Faust buffered, see BATCH_MAX) the agent:
1. decodes, checks and handles each record in order (`batch.process_batch`: the profile's
   state is read from the table once per batch; refused records are copied to the
   invalid-input topic);
2. writes each changed profile's final state to the local store, once per batch;
3. queues the outputs (webhook-due records, run results) and the changelog records with
   Faust's aiokafka producer, one producer batch per topic partition (`engine.outbound`);
4. tells the due index when each profile touched falls due next.
Faust acks the batch's records after that, and flushes the producer before it commits
offsets (`faust_compat.aiokafka_producer`), so every output of a committed record is on
Kafka; outputs of records after the last commit are produced again when the records are
read again (see the outbox in `core.handle`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from processor.engine import faust_compat
from processor.engine.batch import Input, Topics, Write, process_batch
from processor.engine.due import DueIndex
from processor.engine.flowset import FlowSet
from processor.engine.outbound import Outbound
from processor.engine.status import WorkerStatus
from processor.kafka import send_with_retries
from processor.logs import get_logger
from processor.ops.metrics import WorkerMetrics

log = get_logger(__name__)

# Records are handled in batches of up to BATCH_MAX, or what arrived within BATCH_WITHIN_S:
# one table write per profile and one producer batch per topic partition per batch. The
# wait bounds the latency it adds when records trickle in.
BATCH_MAX: Final = 1000
BATCH_WITHIN_S: Final = 0.005


class BatchPath:
    """The agent body and what it does per batch (see the module docstring)."""

    def __init__(self, *, app: faust.App, table: faust.Table, topics: Topics, flows: FlowSet,
                 clock: Callable[[], int], due: DueIndex, metrics: WorkerMetrics,
                 status: WorkerStatus) -> None:
        self.app, self.table, self.topics, self.flows = app, table, topics, flows
        self.clock, self.due, self.metrics, self.status = clock, due, metrics, status
        self._keyed_topics = [topics.outputs["webhook"], topics.outputs["result"]]
        self.outbound = Outbound(on_failure=self._on_send_failed)
        self.processed = 0
        self.batches = 0

    async def agent(self, stream: Any) -> None:
        try:
            # Faust acks a batch's records only after this loop body has run for it.
            async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                await self.on_batch(events)
        except Exception as exc:
            # A table or producer failure: stop the worker (see `Engine._wait`) rather than
            # keep a member in the group that holds partitions and processes nothing.
            self.status.failure = exc
            raise

    async def on_batch(self, events: list[Any]) -> None:
        """Handle a batch of input records (Faust events). Bad input is copied aside, never
        raised; a failing table or producer raises, so the worker stops and the records are
        read again after a restart."""
        inputs = [_input(event) for event in events]
        result = process_batch(
            inputs, topics=self.topics, flows=self.flows, load=self._load,
            clock=self.clock, committed=self._committed,
        )
        producer = faust_compat.aiokafka_producer(self.app)
        await self.outbound.prepare(producer, self._keyed_topics)
        await self._queue_outputs(producer, result.produce)
        changelog = self._changelog_topic()
        for write in result.writes:
            self._store(write)
            self.outbound.add(changelog, write.key, write.value, write.partition)
        await self.outbound.send(producer, self._on_acked)
        for profile_id, partition, due in result.due:
            if due is None:
                self.due.set(profile_id, None, partition)
            else:
                self.due.set(profile_id, due[0], partition, due[1])
        self.processed += result.handled
        faust_compat.mark_processed(self.app, events)  # what the input commits go by
        self.batches += 1
        self._count(result.events, result.runs, result.webhooks)

    async def _queue_outputs(self, producer: AIOKafkaProducer, produce: list[Any]) -> None:
        invalid = self.topics.invalid
        for record in produce:
            if record.topic == invalid:  # rare; its key may be missing
                # Waits for the ack, retrying; if the copy cannot be written the worker stops
                # with one line naming the record, whose offset is then never committed.
                await send_with_retries(producer, record.topic, record.key, record.value,
                                        source=record.source or "?")
            else:
                self.outbound.add(record.topic, record.key, record.value, record.partition)

    def _count(self, events: Any, runs: Any, webhooks: Any) -> None:
        """The batch's counts into the metrics: one dict update per distinct label set."""
        metrics = self.metrics
        metrics.events.add_counts(events)
        metrics.runs.add_counts(runs)
        metrics.webhooks_due.add_counts(webhooks)
        for (topic, outcome), n in events.items():
            if outcome == "invalid":
                metrics.invalid.add((topic,), n)

    def _load(self, key: bytes, item: Input) -> bytes | None:
        # The RocksDB store finds a key's partition database through Faust's current event.
        faust_compat.set_current_event(item.ref)
        raw: bytes | None = self.table.get(key)
        return raw

    def _store(self, write: Write) -> None:
        """Write a profile's state to the local store only; its changelog record goes out with
        the batch's outputs (Faust's own path would send one FutureMessage per write)."""
        faust_compat.set_current_event(write.ref)
        self.table.data[write.key] = write.value

    def _on_acked(self, topic: str, partition: int, base_offset: int, count: int) -> None:
        """What Faust's `_on_changelog_sent` does: remember how far the changelog is in the
        store (RocksDB reads the changelog from there on recovery). The batch's first offset,
        not its last: reading a few records again is harmless, skipping one would not be."""
        if topic == self._changelog_topic():
            self.table.data.set_persisted_offset(TP(topic, partition), base_offset)

    def _on_send_failed(self, exc: BaseException) -> None:
        # The producer gave up on a batch: stop before more offsets are committed.
        log.error("produce_failed", error=repr(exc))
        self.status.fail(exc)

    def _changelog_topic(self) -> str:
        topic: str = self.table.changelog_topic.get_topic_name()
        return topic

    def _committed(self, topic: str, partition: int) -> int | None:
        return faust_compat.committed_offsets(self.app).get(TP(topic, partition))


def _input(event: Any) -> Input:
    message = event.message
    return Input(message.topic, message.partition, message.offset, message.key, message.value, event)
