"""The dispatcher worker: what both lanes share, the handling of one taken record, the run.

A webhook-due record goes through small stages, each its own module:

1. fetch and decode (`lane`, `decode`): a lane (a consumer group: first tries, or the retry
   tiers) fetches records, decodes them, registers their offsets as pending and puts each
   into its destination's queue (`pool`), whose workers call `Dispatcher.handle`;
2. decide (`decide`, pure): repeats are skipped (`dedupe`); held, invalid and expired
   records are settled without a request; `request.prepare` builds the request (secrets,
   signing, address policy) or refuses it; an unset secret or an open circuit (`breaker`)
   defers the try; the rate limit (`ratelimit`) spaces requests;
3. send (`delivery`, aiohttp): one request on the shared session -> an `attempt.Attempt`;
4. outcome (`decide`, `outcomes`, pure): the breaker learns of the attempt, and the records
   to produce are made (result, retry-tier or dead-letter copy);
5. commit (`lane`, `offsets`): the outputs are produced; a callback on their acks marks the
   offset done; every `commit_interval_s`, and on revoke and shutdown, each partition's offset
   below which every outcome is acknowledged is committed, so a crash re-delivers (at least
   once, same webhook-id), never loses.

Both lanes share one aiohttp session, one producer, the per-destination queues, limits and
circuit breakers. On revoke and on shutdown: stop taking work, let the taken records finish
(acks included) within one deadline (`shutdown_deadline_s`; on revoke at most half the
rebalance timeout), abandon the rest (their offsets stay uncommitted), commit.

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
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from processor import constants as c
from processor.clock import now_ms
from processor.dispatch import outcomes
from processor.dispatch.attempt import Prepared
from processor.dispatch.breaker import DEFAULT_COOLDOWN_MS, DEFAULT_THRESHOLD, Breakers
from processor.dispatch.decide import Decider
from processor.dispatch.dedupe import Attempts
from processor.dispatch.deferrals import Deferrals
from processor.dispatch.delivery import make_session, send
from processor.dispatch.lane import Lane, Work
from processor.dispatch.learn import read_attempts
from processor.dispatch.outcomes import Output
from processor.dispatch.pool import DestinationPool
from processor.dispatch.ratelimit import RateLimiters
from processor.errors import FlowhookError
from processor.kafka import (
    CopyAsideFailed,
    connect_failure,
    ensure_topics,
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
from processor.records.types import WebhookDue
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["Dispatcher", "DispatcherError", "DispatcherOptions", "run_dispatcher"]

# How often burst mode (`--drain`) says what it still waits for, when it does not end.
DRAIN_TELL_S = 10.0


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
        self.decider = Decider(
            self.topics, settings.allow_http, settings.allow_networks,
            self.breakers, self.deferrals, self.rng,
            on_secret_missing=lambda name: self.metrics.secret_missing.add((name,)),
        )

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
            await read_attempts(self._reader, self.topics.results, since_ms, self.attempts)

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
            return self.decider.settled(due, now_ms()) or await self._attempt_outputs(due, window)
        except Exception as exc:  # a bug must not turn one record into a crash loop (poison pill)
            return self.decider.crashed(due, exc)

    async def _attempt_outputs(self, due: WebhookDue, window: asyncio.Semaphore) -> list[Output]:
        """Prepare, rate limit, the breaker, then an in-flight slot, then send (the send stage).

        Runs in one of the destination's workers (at most `per_destination` of them), so a
        record waiting for a busy or slow destination holds no in-flight slot and other
        destinations keep their throughput; the breaker is asked when a worker reaches the
        record, so records queued behind a failing destination skip the request once it opens.
        """
        decider = self.decider
        prepared = decider.request(due, now_ms())
        if not isinstance(prepared, Prepared):
            return prepared  # refused, or deferred for a secret
        destination = prepared.destination
        rate = due.options.rate_limit
        if rate:
            await self.rate_limits.acquire(destination, rate)
        deferred = decider.gate(due, destination, now_ms())
        if deferred is not None:
            return deferred
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
            decider.abandoned(destination)
            raise
        if attempt.latency_ms is not None:
            metrics.delivery_seconds.observe(attempt.latency_ms / 1000)
        return decider.outcome(due, destination, attempt, now_ms())

    async def send_outputs(self, outputs: Iterable[Output]) -> list[asyncio.Future[Any]]:
        """Hand the outputs to the producer (batched with linger); the futures of their acks."""
        assert self.producer is not None
        return [await self.producer.send(o.topic, o.value, key=o.key) for o in outputs]

    def retry_produced(self, outputs: list[Output]) -> None:
        """Burst mode only: remember the retries produced until they come back. (Not kept
        otherwise: another dispatcher may consume them, and the set would only grow.)"""
        if self.options.drain_idle_s is None:
            return
        for output in outputs:
            if output.topic.startswith(self._retry_prefix):
                due = orjson.loads(output.value)
                self.outstanding_retries.add((due["delivery_id"], due["attempt"]))



async def _commit_loop(lanes: list[Lane], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        for lane in lanes:
            await lane.commit()


async def _drain_watch(core: Dispatcher, lanes: list[Lane], idle_s: float) -> None:
    """Burst mode: stop once every lane has been idle for `idle_s` and no retry is outstanding."""
    told_at = time.monotonic()
    while not core.stop_event.is_set():
        await asyncio.sleep(min(0.1, idle_s / 4))
        idle = [lane.idle_for() for lane in lanes]
        if not core.outstanding_retries and all(i is not None and i >= idle_s for i in idle):
            log.info("drained", idle_s=idle_s)
            core.stop_event.set()
        elif time.monotonic() - told_at >= DRAIN_TELL_S:  # a burst that does not end says why
            told_at = time.monotonic()
            log.info("drain_waiting", retries_outstanding=len(core.outstanding_retries),
                     lanes={lane.name: lane.state() for lane in lanes})


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
    # The partitioner is the same murmur2 as aiokafka's, faster.
    # Batches are kept through an outage (OUTAGE_RIDE_MS), not failed after 40 s.
    # linger 20 ms: what waits is only the ack that lets an offset be committed (the request
    # has gone out already), and fewer, larger produce requests cost less CPU per delivery.
    core.producer = make_producer(settings, partitioner=KeyPartitioner(), request_timeout_ms=OUTAGE_RIDE_MS,
                                  linger_ms=20)
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

