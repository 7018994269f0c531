"""The Faust edge of the engine: app, table, agent, wake-up timer, flow registry consumer.

All semantics live in `engine.core` (one record) and `engine.batch` (a batch of records);
this module moves bytes. Per batch of input records (what Faust buffered, see BATCH_MAX)
the agent:
1. decodes, checks and handles each record in order (`batch.process_batch`: the profile's
   state is read from the table once per batch; refused records are copied to the
   invalid-input topic);
2. writes each changed profile's final state to the local store, once per batch;
3. queues the outputs (webhook-due records, run results) and the changelog records with
   Faust's aiokafka producer, one producer batch per topic partition (`engine.outbound`);
4. tells the due index when each profile touched falls due next.
Faust acks the batch's records after that, and flushes the producer before it commits
offsets, so every output of a committed record is on Kafka; outputs of records after the
last commit are produced again when the records are read again (see the outbox in
`core.handle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.streams import _current_event
from faust.types import TP

from processor import constants as c
from processor import topic_plan
from processor.clock import iso, now_ms
from processor.engine.batch import Input, Topics, Write, process_batch
from processor.engine.core import RecordKind, unscheduled_dates
from processor.engine.due import DueIndex
from processor.engine.flowset import FlowSet
from processor.engine.outbound import Outbound
from processor.engine.placement import Placement
from processor.engine.profiles import lookup
from processor.engine.registry import FlowRegistry
from processor.engine.state import due_of, never_due
from processor.errors import FlowhookError
from processor.flows.model import Flow
from processor.kafka import (
    ensure_topics,
    idempotent,
    make_producer,
    make_reader,
    send_with_retries,
    ssl_context,
    wait_for_broker,
)
from processor.logs import get_logger
from processor.ops.endpoint import Endpoint, Readiness, start_endpoint
from processor.ops.lag import LagWatch
from processor.ops.metrics import WorkerMetrics
from processor.outage import BrokerWatch
from processor.records import invalid_copy
from processor.settings import Settings
from processor.topic_plan import processor_app_id

log = get_logger(__name__)

TABLE_NAME: Final = topic_plan.TABLE_NAME
DUE_TICK_S: Final = 0.1
# At most this many wake-ups per tick, so catching up after downtime cannot flood the
# wake-up topic (and the agent) faster than it drains: about 2,000 profiles a second.
WAKEUPS_PER_TICK: Final = 200
CATCH_UP_IDLE_MS: Final = 300
# Records are handled in batches of up to BATCH_MAX, or what arrived within BATCH_WITHIN_S:
# one table write per profile and one producer batch per topic partition per batch. The
# wait bounds the latency it adds when records trickle in.
BATCH_MAX: Final = 1000
BATCH_WITHIN_S: Final = 0.005
# How long a fetch may wait at the broker for records. Faust creates its consumer with
# 1.5 s, and the embedded broker holds a fetch about that long unless it fills, so records
# waited ~0.5-1.5 s before the agent saw them (processor alone at 1,000 events/s: p50
# 447 ms, p99 782 ms); with 10 ms (and 5 ms batches): p50 16-28 ms at the same CPU per record.
FETCH_MAX_WAIT_MS: Final = 10


# RocksDB memory per partition database (a worker opens one per table partition it holds).
# Faust's defaults allow 3 x 64 MiB of memtables and a 2 GiB block cache per database: with
# 8 partitions and 200,000 profiles the worker reached 477 MiB and kept growing with the
# profile count. These bound it to about 2 x 8 + 16 = 32 MiB per partition.
ROCKSDB_OPTIONS: Final = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
}


class EngineCrashed(FlowhookError):
    """The worker's Faust app crashed; the process should exit and be restarted."""


class EngineTable(faust.Table):
    """The profile table, plus a catch-up read past the changelog's reported end.

    Why: Faust's recovery reads a changelog partition up to its high watermark, and the
    embedded broker (Tansu) reports the end offset as the base offset of the last batch,
    so records of a changelog partition's last batch can be missing after a restart or a
    rebalance (tests/engine/test_engine_workers.py shows waiting runs lost that way: 12 records,
    end reported as 1). After Faust's recovery we read each
    active changelog partition again from that reported end until it is idle and apply
    what we find; applying changelog records again is harmless (last write wins, in order).
    On brokers that report the true end this reads nothing.
    """

    engine: Engine

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await self.engine.catch_up_changelog(self, active_tps)
        await super().on_recovery_completed(active_tps, standby_tps)
        self.engine.rebuild_due_index(self)
        self.engine.owned = {tp.partition for tp in active_tps}
        self.engine.ready = True


class Engine:
    """One processor worker: build with settings, then `await run(stop)`."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = settings.topics
        self.flows = FlowSet()
        self.registry = FlowRegistry(
            settings, self.flows, on_change=self.on_flow_change, on_refused=self._flow_refused
        )
        self.due = DueIndex()
        self.app = make_app(settings)
        self.table = self._make_table()
        self._kinds: dict[str, RecordKind] = {
            self.topics.events: "event",
            self.topics.profiles: "profile",
            self.topics.wakeups: "wakeup",
            self.topics.events_repartition: "event",
            self.topics.profiles_repartition: "profile",
        }
        self.placement = Placement(settings.partitions, {
            self.topics.events: self.topics.events_repartition,
            self.topics.profiles: self.topics.profiles_repartition,
        })
        self.misplaced = self.placement.counter  # records forwarded to their home partition
        self._batch_topics = Topics(
            kinds=self._kinds,
            outputs={"webhook": self.topics.webhooks, "result": self.topics.results},
            invalid=self.topics.events_invalid,
            placement=self.placement,
        )
        self._keyed_topics = [self.topics.webhooks, self.topics.results]
        self.outbound = Outbound(on_failure=self._on_send_failed)
        self._flows_producer: AIOKafkaProducer | None = None
        self.processed = 0
        self.batches = 0
        self._fetch_wait_set = False
        self.failure: BaseException | None = None
        self.ready = False  # set once the table has been recovered after an assignment
        self.owned: set[int] = set()  # input partitions whose state is recovered here
        self.partitions = settings.partitions
        self.metrics = WorkerMetrics("processor")
        self.registry.refused = self.metrics.refused
        self._lag = LagWatch(self._lag_sources)
        self.metrics.on_lag(self._lag.samples)
        self._wire()

    def _make_table(self) -> EngineTable:
        table = EngineTable(
            self.app,
            name=TABLE_NAME,
            beacon=self.app.tables.beacon,
            default=None,
            # bytes in and out: the store and the changelog keep our own orjson bytes as they are
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(
                key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
            partitions=self.settings.partitions,
            options=dict(ROCKSDB_OPTIONS) if self.settings.store == "rocksdb" else None,
            # Faust creates the changelog compacted, with the app's replication factor.
            extra_topic_configs=changelog_configs(self.settings),
        )
        table.engine = self
        return self.app.tables.add(table)  # type: ignore[return-value]  # Faust types it as its base

    def _wire(self) -> None:
        source = self.app.topic(
            *self._kinds,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.partitions,
        )
        self.app.agent(source, name="flowhook-engine")(self._agent)
        self.app.timer(DUE_TICK_S)(self._tick)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # async receivers work; Faust's type says sync

    # --- the hot path ---------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        try:
            # Faust acks a batch's records only after this loop body has run for it.
            async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                await self.on_batch(events)
        except Exception as exc:
            # A table or producer failure: stop the worker (see `_wait`) rather than keep a
            # member in the group that holds partitions and processes nothing.
            self.failure = exc
            raise

    async def on_batch(self, events: list[Any]) -> None:
        """Handle a batch of input records (Faust events). Bad input is copied aside, never
        raised; a failing table or producer raises, so the worker stops and the records are
        read again after a restart."""
        inputs = [_input(event) for event in events]
        result = process_batch(
            inputs, topics=self._batch_topics, flows=self.flows, load=self._load,
            clock=self.clock, committed=self._committed,
        )
        producer = self._kafka_producer()
        await self.outbound.prepare(producer, self._keyed_topics)
        for record in result.produce:
            if record.topic == self.topics.events_invalid:  # rare; its key may be missing
                # Waits for the ack, retrying; if the copy cannot be written the worker stops
                # with one line naming the record, whose offset is then never committed.
                await send_with_retries(producer, record.topic, record.key, record.value,
                                        source=record.source or "?")
            else:
                self.outbound.add(record.topic, record.key, record.value, record.partition)
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
        self.batches += 1
        self._count(result.events, result.runs, result.webhooks)

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
        _current_event.set(weakref.ref(item.ref))
        raw: bytes | None = self.table.get(key)
        return raw

    def _store(self, write: Write) -> None:
        """Write a profile's state to the local store only; its changelog record goes out with
        the batch's outputs (Faust's own path would send one FutureMessage per write)."""
        _current_event.set(weakref.ref(write.ref))
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
        if self.failure is None:
            self.failure = exc

    async def _flow_refused(self, record: Any, reason: str) -> None:
        """A flow record the registry refused: copied aside like any unusable input."""
        value = orjson.dumps(invalid_copy(record, reason))
        try:
            if self._flows_producer is None:  # flows are read before Faust's producer exists; rare
                self._flows_producer = make_producer(self.settings)
                await self._flows_producer.start()
            await send_with_retries(self._flows_producer, self.topics.events_invalid, record.key, value,
                                    source=f"{record.topic}/{record.partition}/{record.offset}")
        except Exception as exc:  # stop the worker (see `_wait`): the record is not skipped silently
            self.failure = exc
            raise

    def _kafka_producer(self) -> AIOKafkaProducer:
        """The aiokafka producer inside Faust's: the one Faust flushes before committing."""
        producer: AIOKafkaProducer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]  # private
        return producer

    def _changelog_topic(self) -> str:
        topic: str = self.table.changelog_topic.get_topic_name()
        return topic

    def _committed(self, topic: str, partition: int) -> int | None:
        # Faust keeps the offsets it committed in a private mapping; without it (another
        # Faust version) outbox entries simply live until their size and age bounds.
        offsets = getattr(self.app.consumer, "_committed_offset", None) or {}
        return offsets.get(TP(topic, partition))

    # --- wake-ups -------------------------------------------------------------------

    async def _tick(self) -> None:
        if not self._fetch_wait_set:
            self._fetch_wait_set = shorten_fetch_wait(self.app, FETCH_MAX_WAIT_MS)
        for profile_id, partition, due_ms, reason in self.due.pop_due(self.clock(), WAKEUPS_PER_TICK):
            value = orjson.dumps({"profile_id": profile_id, "due_at": iso(due_ms), "reason": reason})
            await self.app.producer.send(
                self.topics.wakeups, profile_id.encode(), value, partition, None, None
            )

    async def _on_revoked(self, app: Any, revoked: Iterable[TP], **_: Any) -> None:
        # Not ready until the next recovery completes (Faust recovers after every rebalance).
        self.ready = False
        self.owned = set()
        self.due.drop_partitions({tp.partition for tp in revoked})

    def rebuild_due_index(self, table: EngineTable) -> None:
        """Refill the due index from every profile this worker now owns.

        A profile with a date property that a date-triggered flow has not scheduled yet (the
        flow was published after the profile was last seen) is due now: its wake-up
        schedules it (through the agent, the only place the table may change).
        """
        self.due.clear()
        now = self.clock()
        dated = bool(self.flows.dated())
        for raw in table.data.values():
            if raw is None or (not dated and never_due(raw)):
                continue  # nothing of it falls due: no need to decode it (restart time)
            summary = due_of(raw)
            due_ms, reason = summary.due_ms, summary.reason
            if unscheduled_dates(summary.profile, summary.dated_flows, self.flows):
                due_ms, reason = now, "date_property"
            self.due.set(summary.profile_id, due_ms, summary.partition, reason)
        log.info("due_index_rebuilt", profiles_due=len(self.due))

    def on_flow_change(self, flow: Flow | None) -> None:
        """A date-triggered flow was published or changed: look for profiles to schedule."""
        if flow is not None and flow.trigger.kind == "date_property" and self.ready:
            self.rebuild_due_index(self.table)

    async def catch_up_changelog(self, table: EngineTable, active_tps: set[TP]) -> None:
        """Apply changelog records past the broker's reported end (see EngineTable)."""
        if not active_tps:
            return
        reader = make_reader(self.settings, enable_auto_commit=False)
        await reader.start()
        try:
            applied = await _read_tail(reader, table, active_tps)
        finally:
            await reader.stop()
        if applied:
            log.info("changelog_tail_applied", records=applied)

    # --- worker endpoint --------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready once connected, with partitions assigned and their state recovered."""
        details = {"partitions": sorted(self.owned), "flows": len(self.flows),
                   "refused_flows": dict(self.registry.refused)}
        if self.failure is not None or self.app.crashed:
            return Readiness(False, "the engine failed", details)
        if not self.ready:
            return Readiness(False, "joining the group or recovering state", details)
        if not self.owned:
            return Readiness(False, "no partitions assigned", details)
        return Readiness(True, "", details)

    def healthy(self) -> bool:
        return self.failure is None and not self.app.crashed

    def owned_partitions(self) -> set[int] | None:
        return set(self.owned) if self.ready else None

    def read_state(self, key: bytes, partition: int) -> bytes | None:
        """A profile's stored state, read the way the agent reads it (see `_load`)."""
        ref = _LookupRef(SimpleNamespace(partition=partition))
        _current_event.set(weakref.ref(ref))  # type: ignore[arg-type]  # a stand-in with the one attribute read
        raw: bytes | None = self.table.get(key)
        return raw

    async def lookup_profile(self, profile_id: str) -> tuple[int, dict[str, Any]]:
        return lookup(self, profile_id)

    def _lag_sources(self) -> list[tuple[AIOKafkaConsumer, Iterable[str] | None]]:
        consumer = getattr(getattr(self.app.consumer, "_thread", None), "_consumer", None)
        return [] if consumer is None else [(consumer, self._kinds)]

    def _endpoint(self) -> Endpoint:
        return Endpoint(self.metrics, self.readiness, healthy=self.healthy,
                        profiles=self.lookup_profile, token=self.settings.endpoint_token)

    # --- running --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Start the endpoint, create topics, load flows, start the app; stop gracefully when
        `stop` is set."""
        settings = self.settings
        endpoint = await start_endpoint(self._endpoint(), settings.metrics_host, settings.metrics_port)
        try:
            await self._run(stop)
        finally:
            if endpoint is not None:
                await endpoint.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        try:
            if not await wait_for_broker(self.settings, stop=stop):
                return  # stopped (Ctrl-C) before the broker answered
        except TimeoutError:
            raise EngineCrashed(f"cannot reach Kafka at {self.settings.brokers}") from None
        await ensure_topics(self.settings)
        if idempotent(self.settings):
            make_idempotent(self.app)
        _make_dirs(Path(self.app.conf.datadir))
        await self.registry.start()
        await self.registry.wait_loaded()
        await self.app.start()
        self._fetch_wait_set = shorten_fetch_wait(self.app, FETCH_MAX_WAIT_MS)
        log.info("processor_started", flows=len(self.flows), group=self.app.conf.id)
        self._lag.start()
        watch = asyncio.create_task(BrokerWatch(self.settings, "processor").run())
        try:
            await self._wait(stop)
        finally:
            watch.cancel()
            await self._lag.stop()
            await self.app.stop()
            await self.registry.stop()
            if self._flows_producer is not None:
                await self._flows_producer.stop()
            log.info("processor_stopped", processed=self.processed, batches=self.batches,
                     misplaced_forwarded=self.misplaced.total)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a crashed app (Faust stops itself) is an error."""
        while not stop.is_set():
            if isinstance(self.failure, FlowhookError):  # already one clear line
                raise self.failure
            if self.failure is not None:
                raise EngineCrashed(f"the engine agent failed: {self.failure!r}") from self.failure
            if self.app.crashed or self.app.should_stop:
                raise EngineCrashed(f"the Faust app stopped: {self.app.crash_reason!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)


async def _read_tail(reader: AIOKafkaConsumer, table: EngineTable, active_tps: set[TP]) -> int:
    """Read each changelog partition from its reported end until idle; apply to the table."""
    tps = [_kafka_tp(tp) for tp in active_tps]
    reader.assign(tps)
    ends = await reader.end_offsets(tps)
    for tp in tps:
        reader.seek(tp, ends[tp])
    applied, idle_since = 0, time.monotonic()
    while time.monotonic() - idle_since < CATCH_UP_IDLE_MS / 1000:
        batch = await reader.getmany(timeout_ms=100)
        events = [_changelog_event(r) for recs in batch.values() for r in recs]
        if events:
            table.apply_changelog_batch(events)  # type: ignore[arg-type]  # stand-ins with the attributes read
            applied += len(events)
            idle_since = time.monotonic()
    return applied


def make_idempotent(app: faust.App) -> None:
    """Idempotent produce for Faust's producer (outputs and changelog), as for every other
    producer on brokers that support it (`kafka.idempotent`). Faust has no setting for it;
    its producer takes extra aiokafka options from `_settings_extra` when it starts (that is
    how its transactions switch idempotence on), so this adds the option there."""
    producer = app.producer
    extra = producer._settings_extra  # type: ignore[attr-defined]  # private
    producer._settings_extra = lambda: {**extra(), "enable_idempotence": True}  # type: ignore[attr-defined]


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> bool:
    """Set the fetch wait of Faust's aiokafka consumer (Faust hard-codes 1.5 s); False while
    the consumer is not there yet. The fetcher reads the value for every fetch request."""
    consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms
    return True


class _LookupRef:
    """Stands in for a Faust event when reading the table outside the agent: the RocksDB
    store finds a key's partition database through `current_event().message.partition`."""

    def __init__(self, message: SimpleNamespace) -> None:
        self.message = message


def _input(event: Any) -> Input:
    message = event.message
    return Input(message.topic, message.partition, message.offset, message.key, message.value, event)


def _kafka_tp(tp: TP) -> Any:
    return TopicPartition(tp.topic, tp.partition)


def _changelog_event(record: Any) -> SimpleNamespace:
    """The few fields of a Faust event that the stores read when applying a changelog."""
    message = SimpleNamespace(
        key=record.key,
        value=record.value,
        partition=record.partition,
        offset=record.offset,
        topic=record.topic,
        tp=TP(record.topic, record.partition),
    )
    return SimpleNamespace(key=record.key, value=record.value, message=message)


def _make_dirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of the table's changelog beyond Faust's compaction (docs/kafka.md)."""
    return {"min.insync.replicas": str(settings.min_isr), "max.message.bytes": str(c.MAX_MESSAGE_BYTES)}



def faust_credentials(settings: Settings) -> Any:
    """The same SASL/TLS set-up as every other client (`kafka.client_options`), as Faust's."""
    protocol = settings.security_protocol
    context = ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     ssl_context=context, mechanism=settings.sasl_mechanism)
    return faust.SSLCredentials(context) if context is not None else None


def make_app(settings: Settings) -> faust.App:
    """A quiet Faust app for these settings (memory or RocksDB store, short group timeouts)."""
    store = "memory://" if settings.store == "memory" else "rocksdb://"
    return faust.App(
        processor_app_id(settings),
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store=store,
        datadir=str(Path(settings.data_dir) / "processor"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=settings.create_topics,
        broker_credentials=faust_credentials(settings),
        producer_acks=-1,
        producer_max_request_size=c.MAX_REQUEST_BYTES,
        # Batch outputs and changelog writes a little: fewer, larger produce requests.
        producer_linger=0.005,
        # Commit every second: offsets are the only thing that tells a worker taking over a
        # partition what was done, and a commit made during a rebalance may be refused, so
        # a shorter interval means fewer records read again (and outputs repeated) after one.
        broker_commit_interval=1.0,
        web_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
        # The embedded broker's short high watermarks can make a persisted offset look
        # "ahead" of the changelog; that is expected here, not corruption.
        recovery_consistency_check=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
        key_serializer="raw",
        value_serializer="raw",
        loghandlers=[],
    )


async def run_processor(settings: Settings, stop: asyncio.Event | None = None) -> Engine:
    """Run one processor worker in this event loop until `stop` is set (forever if None)."""
    engine = Engine(settings)
    await engine.run(stop or asyncio.Event())
    return engine
