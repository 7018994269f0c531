"""A lane: one consumer group with its in-flight window (the fetch stage and the commit stage).

The *first-try* lane reads `webhooks` and takes records at once; the *retry* lane reads
every retry tier, and a partition whose head is not due yet is paused (its fetched records
wait in memory) and resumed when the head falls due, so a record is sent at its own
`not_before`, never later than needed, and never ahead of first tries.

Fetch: records are decoded (`decode`) and their offsets registered as pending
(`offsets.PartitionOffsets`), then taken into their destination's queue (`pool`), where the
`Dispatcher` makes their outputs. Commit: every `commit_interval_s`, and on revoke and
shutdown, the offset below which every outcome is acknowledged. On revoke: stop taking work,
let the taken records finish (acks included) within the deadline, abandon the rest, commit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from processor import outage
from processor.clock import now_ms
from processor.dispatch.decode import decode, destination_of, not_before_ms
from processor.dispatch.offsets import PartitionOffsets
from processor.kafka import make_consumer
from processor.logs import get_logger
from processor.records.types import WebhookDue

if TYPE_CHECKING:
    from processor.dispatch.worker import Dispatcher

log = get_logger(__name__)

__all__ = ["Buffered", "Lane", "Work"]

# A fetched record: (not before, epoch ms; record; decoded due record or None; why not usable)
Buffered = tuple[int, ConsumerRecord, WebhookDue | None, str | None]


@dataclass(slots=True)
class Work:
    """One taken record on its way through a destination queue."""

    lane: Lane
    tp: TopicPartition
    tracker: PartitionOffsets
    record: ConsumerRecord
    due: WebhookDue | None
    reason: str | None  # why the record cannot be used, when `due` is None



class _Listener(ConsumerRebalanceListener):
    def __init__(self, lane: Lane) -> None:
        self.lane = lane

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.lane.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.lane.on_assigned(assigned)


class Lane:
    """One consumer group with its in-flight window: first tries, or the retry tiers."""

    def __init__(self, core: Dispatcher, name: str, topics: list[str], *, delayed: bool) -> None:
        settings = core.settings
        self.core = core
        self.name = name
        self.topics = topics
        self.delayed = delayed
        self.consumer = make_consumer(
            settings,
            group_id=f"{settings.topic_prefix}dispatcher.{name}",
            client_id=f"flowhook-dispatcher-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
            fetch_max_wait_ms=100,
        )
        options = core.options
        self.window = asyncio.Semaphore(options.concurrency)  # requests in flight
        # Records taken but unfinished (queued, being sent, or waiting for their acks): the
        # fetch loop waits for room once `limit` is reached, and goes on below `resume_at`,
        # so it wakes once per many records, not once per record.
        self.limit = options.concurrency * options.pending_per_request
        self.resume_at = self.limit * 3 // 4
        self.taken = 0
        self.room = asyncio.Event()
        self.room.set()
        self._drained: asyncio.Future[None] | None = None
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self.buffers: dict[TopicPartition, deque[Buffered]] = {}
        self.assigned = False
        self.last_activity = time.monotonic()
        self.learned: set[int] = set()  # partitions whose attempts made were read since assigned

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe(topics=self.topics, listener=_Listener(self))

    # -- rebalance -----------------------------------------------------------------------
    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self.offsets[tp] = PartitionOffsets()
        self.assigned = True
        self.last_activity = time.monotonic()
        log.info("partitions_assigned", lane=self.name, partitions=len(assigned))

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish or abandon in-flight work within the deadline, commit, forget the partitions."""
        # Stay well inside the rebalance timeout, or the group would drop this member.
        rebalance_s = self.core.settings.rebalance_timeout_ms / 2000
        await self.finish_in_flight(min(self.core.options.shutdown_deadline_s, rebalance_s))
        await self.commit(revoked)
        for tp in revoked:
            self.offsets.pop(tp, None)
            self.buffers.pop(tp, None)
            self.learned.discard(tp.partition)
        log.info("partitions_revoked", lane=self.name, partitions=len(revoked))

    async def finish_in_flight(self, deadline_s: float) -> None:
        """Wait until every taken record is finished (acks included), up to the deadline; then
        abandon what is left: queued records are dropped, workers on them cancelled (their
        offsets stay uncommitted)."""
        if self.taken == 0:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.shield(self._drained)
        except TimeoutError:
            left = self.taken
            for _ in await self.core.pool.abandon(lambda work: work.lane is self):
                self.release()
            log.warning("in_flight_abandoned", lane=self.name, count=left)
        finally:
            self._drained = None

    def release(self) -> None:
        """One taken record is finished or abandoned."""
        self.taken -= 1
        if self.taken <= self.resume_at:
            self.room.set()
        if self.taken == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def _wait_for_room(self) -> None:
        while self.taken >= self.limit:
            self.room.clear()
            await self.room.wait()

    def _take(self, tp: TopicPartition, tracker: PartitionOffsets, buffered: Buffered) -> None:
        _, record, due, reason = buffered
        self.taken += 1
        self.core.pool.submit(destination_of(due), Work(self, tp, tracker, record, due, reason))

    async def commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        """Commit, per partition, the offset below which every outcome is acknowledged."""
        wanted = None if only is None else set(only)
        offsets: dict[TopicPartition, int] = {}
        for tp, tracker in list(self.offsets.items()):
            if wanted is not None and tp not in wanted:
                continue
            position = tracker.advance()
            if position is not None and position != tracker.committed:
                offsets[tp] = position
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance or an outage; the next commit covers these offsets
            if not outage.during():  # an outage is logged once, by the watch
                log.warning("commit_failed", lane=self.name, error=repr(exc))
            return
        for tp, position in offsets.items():
            if tp in self.offsets:
                self.offsets[tp].committed = position

    # -- taking work ---------------------------------------------------------------------
    async def run(self) -> None:
        """Fetch and start work until the dispatcher stops."""
        while not self.core.stop_event.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self._poll_timeout_ms(), max_records=self.core.options.concurrency
            )
            if batch:
                self.last_activity = time.monotonic()
                await self._learn(batch)
            for tp, recs in batch.items():
                await (self._buffer(tp, recs) if self.delayed else self._start_all(tp, recs))
            if self.delayed:
                await self._start_due()

    async def _learn(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Before the first records of a partition since its assignment: the attempts already
        made for it (see `dedupe`), so what a crashed predecessor finished is not sent again."""
        since: dict[int, int] = {}
        for tp, recs in batch.items():
            if tp.partition not in self.learned and recs:
                since[tp.partition] = min(since.get(tp.partition, recs[0].timestamp), recs[0].timestamp)
        if not since:
            return
        await self.core.learn_attempts(since)
        self.learned.update(since)

    def _poll_timeout_ms(self) -> int:
        if not self.buffers:
            return 200
        head = min(buf[0][0] for buf in self.buffers.values() if buf)
        return max(1, min(200, head - now_ms()))

    def _tracker(self, tp: TopicPartition) -> PartitionOffsets:
        tracker = self.offsets.get(tp)
        if tracker is None:
            tracker = self.offsets[tp] = PartitionOffsets()
        return tracker

    async def _start_all(self, tp: TopicPartition, recs: list[ConsumerRecord]) -> None:
        tracker = self._tracker(tp)
        for record in recs:
            tracker.add(record.offset)
        await self._wait_for_room()  # once per fetched batch: the batch may overshoot the limit
        if self.offsets.get(tp) is not tracker:  # revoked meanwhile: the next owner has it
            return
        for record in recs:
            due, reason = decode(record)
            self._take(tp, tracker, (0, record, due, reason))

    async def _buffer(self, tp: TopicPartition, recs: list[ConsumerRecord]) -> None:
        tracker = self._tracker(tp)
        buffer = self.buffers.setdefault(tp, deque())
        for record in recs:
            tracker.add(record.offset)
            due, reason = decode(record)
            if due is not None:
                self.core.outstanding_retries.discard((due.delivery_id, due.attempt))
            buffer.append((not_before_ms(due), record, due, reason))
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)  # hold the partition until its head is due

    async def _start_due(self) -> None:
        for tp in list(self.buffers):
            buffer = self.buffers.get(tp)
            while buffer and buffer[0][0] <= now_ms():
                await self._wait_for_room()
                if self.buffers.get(tp) is not buffer:
                    break
                self._take(tp, self.offsets[tp], buffer.popleft())
            if buffer is not None and not buffer and self.buffers.get(tp) is buffer:
                del self.buffers[tp]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)

    def state(self) -> dict[str, Any]:
        """What the lane holds, for a burst that does not end (`drain_waiting`)."""
        return {"assigned": self.assigned, "taken": self.taken,
                "buffered": sum(len(b) for b in self.buffers.values()),
                "idle_s": round(time.monotonic() - self.last_activity, 1)}

    def idle_for(self) -> float | None:
        """Seconds this lane has had nothing to do, or None while it is busy or unassigned."""
        if not self.assigned or self.taken or self.buffers:
            return None
        return time.monotonic() - self.last_activity


