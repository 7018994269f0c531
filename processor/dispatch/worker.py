"""The dispatcher worker: consumer groups, in-flight windows, offsets, retry tiers.

Two lanes, each its own consumer group and in-flight window, share one aiohttp session,
one producer, the per-destination limits and the circuit breakers:

- the *first-try* lane reads `webhooks` and sends at once;
- the *retry* lane reads every retry tier; a partition whose head is not due yet is paused
  (its fetched records wait in memory) and resumed when the head falls due, so a record is
  sent at its own `not_before`, never later than needed, and never ahead of first tries.

Commit path (per partition, for each lane), step by step:

1. A fetched record's offset is registered as pending, in offset order.
2. The record goes into its destination's queue (`pool.DestinationPool`; records that are
   not sent share one queue); a worker of that destination makes the attempt (or decides
   held/invalid/blocked without one) and produces every output: the result record and,
   when needed, the retry-tier or dead-letter copy.
3. A callback on the broker's acks for all of those outputs (acks=all) marks the offset
   done, so the worker goes on to its next record meanwhile. Work that fails or is
   abandoned never marks it.
4. Every `commit_interval_s`, and on revoke and shutdown, the done offsets at the front of
   the pending list are dropped; the offset after the last one dropped is committed. So
   the committed offset is the highest one below which every record's outcome is
   acknowledged, and a crash re-delivers (at least once, same webhook-id), never loses.

On revoke and on shutdown: stop taking work, let the lane's taken records finish (acks
included) within one deadline (`shutdown_deadline_s`; on revoke at most half the rebalance
timeout), abandon the rest (their offsets stay uncommitted), commit.

Consumer groups: `<prefix>dispatcher.first` and `<prefix>dispatcher.retry`. Burst mode
(`drain_idle_s`) is meant for one dispatcher process (tests, bench, demo): it also waits
until every retry this process produced has come back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from processor import constants as c
from processor import outage, strict_json
from processor.clock import now_ms, parse_iso_ms
from processor.dispatch import outcomes
from processor.dispatch.breaker import DEFAULT_COOLDOWN_MS, DEFAULT_THRESHOLD, Breakers
from processor.dispatch.dedupe import Attempts
from processor.dispatch.deferrals import Deferrals
from processor.dispatch.delivery import (
    Attempt,
    RequestRefused,
    destination_key,
    make_session,
    prepare,
    send,
)
from processor.dispatch.outcomes import Output
from processor.dispatch.pool import DestinationPool
from processor.dispatch.ratelimit import RateLimiters
from processor.dispatch.secrets import SecretMissing
from processor.errors import FlowhookError
from processor.kafka import (
    CopyAsideFailed,
    connect_failure,
    ensure_topics,
    make_consumer,
    make_producer,
    make_reader,
    send_with_retries,
    wait_for_broker,
)
from processor.logs import get_logger
from processor.ops.endpoint import Endpoint, Readiness, start_endpoint
from processor.ops.lag import LagWatch
from processor.ops.metrics import WorkerMetrics
from processor.outage import OUTAGE_RIDE_MS, BrokerWatch
from processor.partitioner import KeyPartitioner
from processor.records.due import decode_due
from processor.records.types import WebhookDue
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["Dispatcher", "DispatcherError", "DispatcherOptions", "PartitionOffsets", "run_dispatcher"]


class DispatcherError(FlowhookError):
    """The dispatcher cannot reach Kafka, or stopped because an outcome could not be written
    (nothing was committed past it, so a restart re-delivers)."""


@dataclass(frozen=True)
class DispatcherOptions:
    """Tuning of one dispatcher process."""

    concurrency: int = c.DEFAULT_INFLIGHT  # requests in flight, per lane
    pending_per_request: int = 4  # records taken but unfinished (acks included), per in-flight request
    per_destination: int = c.DEFAULT_PER_DESTINATION
    drain_idle_s: float | None = None  # burst mode: exit once idle this long
    shutdown_deadline_s: float = 10.0
    # Often: a dispatcher taking over a partition skips what its predecessor finished (see
    # `dedupe`), but every commit also shortens what it has to look through.
    commit_interval_s: float = 0.2
    breaker_threshold: int = DEFAULT_THRESHOLD
    breaker_cooldown_ms: int = DEFAULT_COOLDOWN_MS


class PartitionOffsets:
    """Pending offsets of one partition, in order; tells the offset that may be committed."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.commit_at: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)

    def advance(self) -> int | None:
        """Drop the done offsets at the front; the offset to commit (None: nothing yet)."""
        while self._pending and self._pending[0] in self._done:
            offset = self._pending.popleft()
            self._done.discard(offset)
            self.commit_at = offset + 1
        return self.commit_at

    def __len__(self) -> int:
        return len(self._pending)


def decode(record: ConsumerRecord) -> tuple[WebhookDue | None, str | None]:
    """(webhook-due record, None) or (None, why it cannot be used)."""
    try:
        return decode_due(record.value, now_ms()), None
    except strict_json.NotUsable as exc:
        return None, str(exc)


def not_before_ms(due: WebhookDue | None) -> int:
    """When a retry may be sent (0: now)."""
    if not due or not due.not_before:
        return 0
    try:
        return parse_iso_ms(due.not_before)  # type: ignore[arg-type]
    except ValueError:
        return 0


def destination_of(due: WebhookDue | None) -> str | None:
    """The queue of a record: its destination (host:port), or None when nothing is sent."""
    if due is None or due.mode != "send":
        return None
    try:
        return destination_key(due.request.url)
    except ValueError:  # prepare() refuses it with the reason
        return None


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


class Dispatcher:
    """Everything the lanes share: session, producer, limits, breakers; makes the outputs."""

    def __init__(self, settings: Settings, options: DispatcherOptions) -> None:
        self.settings = settings
        self.options = options
        self.topics = settings.topics
        self.breakers = Breakers(options.breaker_threshold, options.breaker_cooldown_ms)
        self.rate_limits = RateLimiters()
        # Destination queues, shared by both lanes, so `per_destination` bounds the requests
        # to one host:port from the whole process; records not sent share the None queue.
        self.pool: DestinationPool[Work] = DestinationPool(self.handle, self._queue_limit)
        self.rng = random.Random()
        self.stop_event = asyncio.Event()
        self.fatal: BaseException | None = None
        self._retry_prefix = self.topics.name(c.WEBHOOKS) + ".retry."  # checked once per delivery
        # Retry records this process produced and has not consumed back yet (drain mode).
        self.outstanding_retries: set[tuple[str, int]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.producer: AIOKafkaProducer | None = None
        self.metrics = WorkerMetrics("dispatcher")
        self.metrics.on_breakers(
            lambda: [((key,), 1.0 if b.is_open else 0.0) for key, b in self.breakers.by_key.items()]
        )
        self.lanes: list[Lane] = []
        self.started = False
        self.attempts = Attempts()
        self._reader: AIOKafkaConsumer | None = None  # reads results back (learn_attempts)
        self._reader_lock = asyncio.Lock()
        self.deferrals = Deferrals(self.rng)

    def fail(self, exc: BaseException) -> None:
        """Stop everything: an outcome could not be made or written."""
        log.error("dispatcher_failed", error=repr(exc))
        if self.fatal is None:
            self.fatal = exc
        self.stop_event.set()

    def _queue_limit(self, key: Hashable) -> int:
        return self.options.concurrency if key is None else self.options.per_destination

    async def handle(self, work: Work) -> None:
        """Make one record's outputs and produce them; the acks' callback marks the offset done."""
        lane = work.lane
        if lane.offsets.get(work.tp) is not work.tracker:  # revoked meanwhile: the next owner has it
            lane.release()
            return
        due = work.due
        if due is None:
            await self._copy_aside(work)
            return
        if self.attempts.made(due):  # read again (a re-emit or a re-read): sent already
            self._skip(work)
            return
        self.attempts.begin(due)
        handed_off = False
        try:
            outputs = await self.outputs_for(work.record, due, work.reason, lane.window)
            self.retry_produced(outputs)
            acks = await self.send_outputs(outputs)
            ack = acks[0] if len(acks) == 1 else asyncio.gather(*acks)
            made = all(o.attempt_made for o in outputs)
            ack.add_done_callback(lambda done: self._acked(work, done, made, outputs))
            handed_off = True
        except Exception as exc:  # anything unexpected: stop, leave the offset uncommitted
            self.fail(exc)
        finally:
            if not handed_off:
                self.attempts.end(due, finished_ms=None)
                lane.release()
            lane.last_activity = time.monotonic()

    def _skip(self, work: Work) -> None:
        self.attempts.skipped += 1
        log.debug("repeat_skipped", delivery_id=work.record.key, attempt=work.due and work.due.attempt)
        work.tracker.finish(work.record.offset)
        work.lane.release()
        work.lane.last_activity = time.monotonic()

    async def _copy_aside(self, work: Work) -> None:
        """An unusable record: its invalid-input copy, acknowledged (retried), then its offset
        is done; if the copy cannot be written the dispatcher stops with one line naming it."""
        record = work.record
        output = outcomes.invalid_input(self.topics, record, work.reason or "unusable")
        try:
            assert self.producer is not None
            await send_with_retries(self.producer, output.topic, output.key, output.value,
                                    source=f"{record.topic}/{record.partition}/{record.offset}")
            work.tracker.finish(record.offset)
            self.metrics.invalid.add((record.topic,))
        except Exception as exc:
            self.fail(exc)
        finally:
            work.lane.release()
            work.lane.last_activity = time.monotonic()

    def _acked(self, work: Work, ack: asyncio.Future[Any], made: bool, outputs: list[Output]) -> None:
        finished: int | None = None
        try:
            if ack.cancelled():
                return  # not written: the offset stays uncommitted
            error = ack.exception()
            if error is not None:
                self.fail(error)
            else:
                work.tracker.finish(work.record.offset)
                finished = now_ms() if made else None
                self._count(work, outputs)
        finally:
            assert work.due is not None
            self.attempts.end(work.due, finished_ms=finished)
            work.lane.release()

    def _count(self, work: Work, outputs: list[Output]) -> None:
        """Metrics of what was written: one delivery count per result record (one dict update)."""
        for output in outputs:
            if output.outcome is not None and work.due is not None:
                self.metrics.deliveries.add((work.due.flow_id, work.due.step_id, output.outcome))

    def readiness(self) -> Readiness:
        """Ready once started, with partitions of every lane assigned."""
        assigned = {lane.name: len(lane.consumer.assignment()) for lane in self.lanes}
        details = {"partitions": assigned}
        if self.fatal is not None:
            return Readiness(False, "stopping after a failure", details)
        if not self.started:
            return Readiness(False, "starting", details)
        missing = [name for name, n in assigned.items() if n == 0]
        if missing:
            return Readiness(False, f"no partitions assigned yet: {', '.join(missing)}", details)
        return Readiness(True, "", details)

    def retry_depth(self, lags: dict[tuple[str, str], float]) -> list[tuple[tuple[str, ...], float]]:
        """Per retry tier: records not fetched yet (lag) plus fetched ones waiting to be due."""
        depth = dict.fromkeys(self.topics.retry_tiers, 0.0)
        for (topic, _partition), lag in lags.items():
            if topic in depth:
                depth[topic] += lag
        for lane in self.lanes:
            for tp, buffer in lane.buffers.items():
                if tp.topic in depth:
                    depth[tp.topic] += len(buffer)
        return [((topic,), value) for topic, value in depth.items()]

    async def close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(KafkaError):
                await self._reader.stop()

    async def learn_attempts(self, since_ms: dict[int, int]) -> None:
        """Read the results partitions co-partitioned with newly assigned ones (results of
        partition p for records of partition p) from a little before `since_ms[p]` (the
        timestamp of the first record to handle there) until idle: the attempts made."""
        async with self._reader_lock:  # both lanes share the one reader
            await self.start_reader()
            assert self._reader is not None
            await _read_attempts(self._reader, self.topics.results, since_ms, self.attempts)

    async def start_reader(self) -> None:
        """The reader of `learn_attempts`, started once (at start-up, so that the first
        partitions assigned do not wait for it)."""
        if self._reader is None:
            self._reader = make_reader(self.settings, fetch_max_wait_ms=50)
            await self._reader.start()

    async def outputs_for(
        self,
        record: ConsumerRecord,
        due: WebhookDue | None,
        reason: str | None,
        window: asyncio.Semaphore,
    ) -> list[Output]:
        """Everything to produce for one webhook-due record (making its attempt if it is sent)."""
        if due is None:
            return [outcomes.invalid_input(self.topics, record, reason or "unusable")]
        try:
            return (
                outcomes.for_mode(self.topics, due)
                or outcomes.expired(self.topics, due, now_ms())
                or await self._attempt_outputs(due, window)
            )
        except Exception as exc:  # a bug must not turn one record into a crash loop (poison pill)
            log.exception("delivery_crashed", delivery_id=due.delivery_id)
            error = f"internal error: {type(exc).__name__}"  # the type only: a message might hold a secret
            return [outcomes.result_output(self.topics, due, "invalid", error=error)]

    async def _attempt_outputs(self, due: WebhookDue, window: asyncio.Semaphore) -> list[Output]:
        """Rate limit, then the breaker, then an in-flight slot, then send.

        Runs in one of the destination's workers (at most `per_destination` of them), so a
        record waiting for a busy or slow destination holds no in-flight slot and other
        destinations keep their throughput; the breaker is asked when a worker reaches the
        record, so records queued behind a failing destination skip the request once it opens.
        """
        try:
            prepared = prepare(
                due, allow_http=self.settings.allow_http, allow_networks=self.settings.allow_networks
            )
        except RequestRefused as refused:
            return outcomes.after_attempt(self.topics, due, refused.attempt, self.rng)
        except SecretMissing as missing:
            return self._defer(due, f"secret {missing.name} is not set", self.deferrals.secret_wait_ms(due),
                               key=f"secret:{missing.name}")
        rate = due.options.rate_limit
        if rate:
            await self.rate_limits.acquire(prepared.destination, rate)
        breaker = self.breakers.get(prepared.destination)
        if not breaker.allow(now_ms()):
            wait = self.deferrals.breaker_wait_ms(breaker, now_ms())
            return self._defer(due, f"circuit open for {prepared.destination}", wait, key="circuit_open")
        metrics = self.metrics
        try:
            async with window:
                assert self.session is not None
                metrics.in_flight += 1
                try:
                    attempt = await send(self.session, prepared)
                finally:
                    metrics.in_flight -= 1
        except BaseException:
            breaker.probing = False  # an abandoned probe must not keep the circuit open forever
            raise
        if attempt.latency_ms is not None:
            metrics.delivery_seconds.observe(attempt.latency_ms / 1000)
        self._update_breaker(prepared.destination, attempt)
        if attempt.failure is not None:
            log.debug("attempt_failed", delivery_id=due.delivery_id, error=attempt.error)
        return outcomes.after_attempt(self.topics, due, attempt, self.rng)

    def _defer(self, due: WebhookDue, reason: str, wait_ms: int, *, key: str) -> list[Output]:
        """A try not made: counted and logged (by secret name, never value), then re-queued."""
        self.deferrals.count(key, due.delivery_id, reason)
        return outcomes.deferred(self.topics, due, reason=reason, wait_ms=wait_ms, now=now_ms())

    def _update_breaker(self, destination: str, attempt: Attempt) -> None:
        breaker = self.breakers.get(destination)
        if attempt.failure is None or not attempt.failure.trips_breaker:
            if breaker.is_open:
                log.info("circuit_closed", destination=destination)
            breaker.success()
        elif breaker.failure(now_ms()):
            log.warning("circuit_opened", destination=destination, failures=breaker.failures)

    async def send_outputs(self, outputs: Iterable[Output]) -> list[asyncio.Future[Any]]:
        """Hand the outputs to the producer (batched with linger); the futures of their acks."""
        assert self.producer is not None
        return [await self.producer.send(o.topic, o.value, key=o.key) for o in outputs]

    def retry_produced(self, outputs: list[Output]) -> None:
        for output in outputs:
            if output.topic.startswith(self._retry_prefix):
                due = orjson.loads(output.value)
                self.outstanding_retries.add((due["delivery_id"], due["attempt"]))


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
            await asyncio.wait_for(asyncio.shield(self._drained), timeout=deadline_s)
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

    def idle_for(self) -> float | None:
        """Seconds this lane has had nothing to do, or None while it is busy or unassigned."""
        if not self.assigned or self.taken or self.buffers:
            return None
        return time.monotonic() - self.last_activity


# Results of a record are written after it was produced; this covers clock skew between hosts.
LEARN_SKEW_MS = 60_000
LEARN_TAIL_S = 0.1


async def _read_attempts(
    reader: AIOKafkaConsumer, topic: str, since_ms: dict[int, int], into: Attempts
) -> None:
    """Read each partition from its start time to the end it had when we began (plus up to
    LEARN_TAIL_S more: the embedded broker reports the end as its last batch's first offset),
    never following new records: the processor keeps writing run results there."""
    tps = {TopicPartition(topic, p): max(0, at - LEARN_SKEW_MS) for p, at in since_ms.items()}
    reader.assign(list(tps))
    starts = await reader.offsets_for_times(tps)
    ends = await reader.end_offsets(list(tps))
    reading = {tp: ends[tp] for tp, found in starts.items() if found is not None and found.offset < ends[tp]}
    idle = [tp for tp in tps if tp not in reading]
    if idle:
        reader.pause(*idle)
    for tp in reading:
        reader.seek(tp, starts[tp].offset)
    learned, reached_at = 0, None
    while reading and (reached_at is None or time.monotonic() - reached_at < LEARN_TAIL_S):
        batch = await reader.getmany(timeout_ms=100, max_records=5000)
        for recs in batch.values():
            for record in recs:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    into.learn(orjson.loads(record.value))
                learned += 1
        if not batch and reached_at is not None:
            break
        if reached_at is None and all(await _positions_reached(reader, reading)):
            reached_at = time.monotonic()
    log.info("attempts_learned", partitions=sorted(since_ms), results_read=learned, remembered=len(into))


async def _positions_reached(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[bool]:
    return [await reader.position(tp) >= end for tp, end in ends.items()]


async def _commit_loop(lanes: list[Lane], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        for lane in lanes:
            await lane.commit()


async def _drain_watch(core: Dispatcher, lanes: list[Lane], idle_s: float) -> None:
    """Burst mode: stop once every lane has been idle for `idle_s` and no retry is outstanding."""
    while not core.stop_event.is_set():
        await asyncio.sleep(min(0.1, idle_s / 4))
        idle = [lane.idle_for() for lane in lanes]
        if not core.outstanding_retries and all(i is not None and i >= idle_s for i in idle):
            log.info("drained", idle_s=idle_s)
            core.stop_event.set()


async def _run_lanes(core: Dispatcher, lanes: list[Lane], stop: asyncio.Event | None) -> None:
    options = core.options
    helpers = [asyncio.create_task(lane.run()) for lane in lanes]
    helpers.append(asyncio.create_task(_commit_loop(lanes, options.commit_interval_s)))
    helpers.append(asyncio.create_task(BrokerWatch(core.settings, "dispatcher").run()))
    if options.drain_idle_s is not None:
        helpers.append(asyncio.create_task(_drain_watch(core, lanes, options.drain_idle_s)))
    if stop is not None:
        helpers.append(asyncio.create_task(_forward(stop, core.stop_event)))
    waiter = asyncio.create_task(core.stop_event.wait())
    try:
        done, _ = await asyncio.wait([waiter, *helpers], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                core.fail(task.exception())  # type: ignore[arg-type]
    finally:
        for task in [waiter, *helpers]:
            task.cancel()
        await asyncio.gather(waiter, *helpers, return_exceptions=True)


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()



async def _shut_down(core: Dispatcher, lanes: list[Lane]) -> None:
    """Stop taking work; finish or abandon in-flight work within one deadline; commit; close."""
    deadline = time.monotonic() + core.options.shutdown_deadline_s
    for lane in lanes:
        await lane.finish_in_flight(max(0.0, deadline - time.monotonic()))
    for lane in lanes:
        await lane.commit()
    for lane in lanes:
        with contextlib.suppress(KafkaError):
            await lane.consumer.stop()


def _install_signal_handlers(event: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)


async def run_dispatcher(
    settings: Settings,
    *,
    concurrency: int = c.DEFAULT_INFLIGHT,
    per_destination: int = c.DEFAULT_PER_DESTINATION,
    drain_idle_s: float | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
    options: DispatcherOptions | None = None,
) -> None:
    """Run the dispatcher until `stop` is set, a signal arrives, or (burst mode) input is drained.

    `concurrency` bounds the requests in flight per lane, `per_destination` those to one
    host:port; `drain_idle_s` ends the run once nothing has arrived or been in flight for that
    long; `stop` (or cancelling the task) shuts down gracefully; `handle_signals` makes
    SIGTERM/SIGINT do the same; `options` overrides all the tuning at once.

    Raises DispatcherError when an outcome could not be written (nothing is committed past it,
    so a restart re-delivers).
    """
    options = options or DispatcherOptions(
        concurrency=concurrency, per_destination=per_destination, drain_idle_s=drain_idle_s
    )
    core = Dispatcher(settings, options)
    if handle_signals:
        _install_signal_handlers(core.stop_event)
    # A signal or the caller's stop ends the wait for the broker at once.
    forward = asyncio.create_task(_forward(stop, core.stop_event)) if stop is not None else None
    try:
        if not await wait_for_broker(settings, wait_s=30, stop=core.stop_event):
            log.info("dispatcher_stopped", before="the broker answered")
            return
        await ensure_topics(settings)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise DispatcherError(connect_failure(settings, exc)) from exc
    finally:
        if forward is not None:
            forward.cancel()
    core.session = make_session(
        allow_networks=settings.allow_networks,
        concurrency=2 * options.concurrency,
        per_destination=options.per_destination,
    )
    # linger 5 ms (make_producer) batches results; the partitioner is the same murmur2, faster.
    # Batches are kept through an outage (OUTAGE_RIDE_MS), not failed after 40 s.
    core.producer = make_producer(settings, partitioner=KeyPartitioner(), request_timeout_ms=OUTAGE_RIDE_MS)
    lanes = core.lanes = [
        Lane(core, "first", [settings.topics.webhooks], delayed=False),
        Lane(core, "retry", settings.topics.retry_tiers, delayed=True),
    ]
    lag = LagWatch(lambda: [(lane.consumer, None) for lane in lanes])
    core.metrics.on_lag(lag.samples)
    core.metrics.on_retry_depth(lambda: core.retry_depth(lag.lags))
    endpoint = None
    try:
        endpoint = await start_endpoint(
            Endpoint(core.metrics, core.readiness, healthy=lambda: core.fatal is None),
            settings.metrics_host, settings.metrics_port,
        )
        await core.producer.start()
        await core.start_reader()
        for lane in lanes:
            await lane.start()
        core.started = True
        lag.start()
        log.info(
            "dispatcher_started", concurrency=options.concurrency, per_destination=options.per_destination
        )
        await _run_lanes(core, lanes, stop)
    finally:
        await lag.stop()
        await asyncio.shield(_close(core, lanes))
        if endpoint is not None:
            await endpoint.stop()
    if isinstance(core.fatal, CopyAsideFailed):
        raise core.fatal
    if core.fatal is not None:
        raise DispatcherError(f"an outcome could not be written: {core.fatal!r}") from core.fatal


async def _close(core: Dispatcher, lanes: list[Lane]) -> None:
    await _shut_down(core, lanes)
    await core.close_reader()
    if core.producer is not None:
        await core.producer.stop()
    if core.session is not None:
        await core.session.close()
    log.info("dispatcher_stopped")
