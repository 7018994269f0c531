"""The Faust edge of the engine: app, table, agent, wake-up timer, flow registry consumer.

All semantics live in `engine.core`; this module moves bytes. Per input record the agent:
1. decodes and checks it (refused records are copied to the invalid-input topic);
2. loads the profile's state from the table and runs `core.handle`;
3. hands the outputs (webhook-due records, run results) to the producer;
4. writes the new state to the table (Faust sends it to the changelog);
5. tells the due index when the profile falls due next.
Faust flushes the producer before it commits offsets, so every output of a committed
record is on Kafka; outputs of records after the last commit are produced again when
the records are read again (see the outbox in `core.handle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from faust.types import TP

from processor import records
from processor.clock import iso, now_ms
from processor.engine.core import Output, RecordKind, drop_committed, handle, unscheduled_dates
from processor.engine.due import DueIndex
from processor.engine.flowset import FlowSet
from processor.engine.inputs import Refused, decode
from processor.engine.registry import FlowRegistry
from processor.engine.state import ProfileState, due_of, dumps, loads
from processor.errors import FlowhookError
from processor.flows.model import Flow
from processor.kafka import ensure_topics, make_reader, wait_for_broker
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

TABLE_NAME: Final = "profiles"
DUE_TICK_S: Final = 0.1
# At most this many wake-ups per tick, so catching up after downtime cannot flood the
# wake-up topic (and the agent) faster than it drains: about 2,000 profiles a second.
WAKEUPS_PER_TICK: Final = 200
CATCH_UP_IDLE_MS: Final = 300


class EngineCrashed(FlowhookError):
    """The worker's Faust app crashed; the process should exit and be restarted."""


class EngineTable(faust.Table):  # type: ignore[misc]
    """The profile table, plus a catch-up read past the changelog's reported end.

    Why: Faust's recovery reads a changelog partition up to its high watermark, and the
    embedded broker (Tansu) reports the end offset as the base offset of the last batch,
    so records of a changelog partition's last batch can be missing after a restart or a
    rebalance (tests/test_engine_workers.py shows waiting runs lost that way: 12 records,
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
        self.engine.ready = True


class Engine:
    """One processor worker: build with settings, then `await run(stop)`."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = settings.topics
        self.flows = FlowSet()
        self.registry = FlowRegistry(settings, self.flows, on_change=self.on_flow_change)
        self.due = DueIndex()
        self.app = make_app(settings)
        self.table = self._make_table()
        self._kinds: dict[str, RecordKind] = {
            self.topics.events: "event",
            self.topics.profiles: "profile",
            self.topics.wakeups: "wakeup",
        }
        self._out_topics = {"webhook": self.topics.webhooks, "result": self.topics.results}
        self.processed = 0
        self.failure: BaseException | None = None
        self.ready = False  # set once the table has been recovered after an assignment
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
        )
        table.engine = self
        return self.app.tables.add(table)

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
        self.app.on_partitions_revoked.connect(self._on_revoked)

    # --- the hot path ---------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        try:
            async for event in stream.events():
                await self.on_message(event.message)
        except Exception as exc:
            # A table or producer failure: stop the worker (see `_wait`) rather than keep a
            # member in the group that holds partitions and processes nothing.
            self.failure = exc
            raise

    async def on_message(self, message: Any) -> None:
        """Handle one input record. Bad input is copied aside, never raised; a failing table
        or producer raises, so the worker stops and the record is read again after a restart."""
        kind = self._kinds[message.topic]
        try:
            record, profile_id = decode(kind, message.value)
        except Refused as exc:
            await self._refuse(message, str(exc))
            return
        key = profile_id.encode()
        raw = self.table.get(key)
        state = loads(raw) if raw is not None else ProfileState(profile_id)
        state.partition = message.partition
        if state.outbox:
            drop_committed(state, self._committed)
        src = f"{message.topic}:{message.partition}:{message.offset}"
        try:
            outcome = handle(state, kind, record, self.flows, self.clock(), src)
        except Exception as exc:  # a record the core cannot handle must not stop the worker
            log.exception("record_failed", topic=message.topic, offset=message.offset)
            await self._refuse(message, f"engine error: {type(exc).__name__}: {exc}")
            return
        for output in outcome.outputs:
            await self._produce(output)
        if outcome.changed or raw is None:
            self.table[key] = dumps(outcome.state)
        due = outcome.state.next_due()
        if due is None:
            self.due.set(profile_id, None, message.partition)
        else:
            self.due.set(profile_id, due[0], message.partition, due[1])
        self.processed += 1

    def _committed(self, topic: str, partition: int) -> int | None:
        # Faust keeps the offsets it committed in a private mapping; without it (another
        # Faust version) outbox entries simply live until their size and age bounds.
        offsets = getattr(self.app.consumer, "_committed_offset", None) or {}
        return offsets.get(TP(topic, partition))

    async def _produce(self, output: Output) -> None:
        topic = self._out_topics[output.kind]
        await self.app.producer.send(topic, output.key.encode(), orjson.dumps(output.value), None, None, None)

    async def _refuse(self, message: Any, reason: str) -> None:
        value = records.invalid_input(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            reason=reason,
        )
        log.warning("input_refused", topic=message.topic, offset=message.offset, reason=reason[:200])
        await self.app.producer.send(
            self.topics.events_invalid, message.key, orjson.dumps(value), None, None, None
        )

    # --- wake-ups -------------------------------------------------------------------

    async def _tick(self) -> None:
        for profile_id, partition, due_ms, reason in self.due.pop_due(self.clock(), WAKEUPS_PER_TICK):
            value = orjson.dumps({"profile_id": profile_id, "due_at": iso(due_ms), "reason": reason})
            await self.app.producer.send(
                self.topics.wakeups, profile_id.encode(), value, partition, None, None
            )

    async def _on_revoked(self, app: Any, revoked: Iterable[TP], **_: Any) -> None:
        self.due.drop_partitions({tp.partition for tp in revoked})

    def rebuild_due_index(self, table: EngineTable) -> None:
        """Refill the due index from every profile this worker now owns.

        A profile with a date property that a date-triggered flow has not scheduled yet (the
        flow was published after the profile was last seen) is due now: its wake-up
        schedules it (through the agent, the only place the table may change).
        """
        self.due.clear()
        now = self.clock()
        for raw in table.data.values():
            if raw is None:
                continue
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

    # --- running --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Create topics, load flows, start the app; stop gracefully when `stop` is set."""
        try:
            await wait_for_broker(self.settings)
        except TimeoutError as exc:
            raise EngineCrashed(str(exc)) from None
        await ensure_topics(self.settings)
        _make_dirs(Path(self.app.conf.datadir))
        await self.registry.start()
        await self.registry.wait_loaded()
        await self.app.start()
        log.info("processor_started", flows=len(self.flows), group=self.app.conf.id)
        try:
            await self._wait(stop)
        finally:
            await self.app.stop()
            await self.registry.stop()
            log.info("processor_stopped", processed=self.processed)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a crashed app (Faust stops itself) is an error."""
        while not stop.is_set():
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
            table.apply_changelog_batch(events)
            applied += len(events)
            idle_since = time.monotonic()
    return applied


def _kafka_tp(tp: TP) -> Any:
    from aiokafka import TopicPartition

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


def make_app(settings: Settings) -> faust.App:
    """A quiet Faust app for these settings (memory or RocksDB store, short group timeouts)."""
    store = "memory://" if settings.store == "memory" else "rocksdb://"
    return faust.App(
        f"{settings.topic_prefix}processor",
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store=store,
        datadir=str(Path(settings.data_dir) / "processor"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        producer_acks=-1,
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
