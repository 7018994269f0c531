"""One processor worker's lifecycle: build the parts, start, watch, stop.

All semantics live in `engine.core` (one record) and `engine.batch` (a batch of records).
The worker is put together from parts, one concern each:
- `faust_app`: the Faust app and the profile table (construction only);
- `batch_path`: the agent, a batch of records in, outputs and state out;
- `wakeups`: the due index and the timer that writes wake-up records;
- `changelog_tail`: the embedded broker's workaround at table recovery;
- `faust_compat`: every reach into private Faust/mode/aiokafka internals, and the
  start-up version check.
`Engine.run` starts them in order (see `_run`) and stops the worker when any part fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from faust.types import TP

from processor import records
from processor.clock import now_ms
from processor.engine import changelog_tail, faust_compat
from processor.engine.batch import Topics
from processor.engine.batch_path import BatchPath
from processor.engine.core import RecordKind
from processor.engine.faust_app import EngineTable, input_topic, make_app, make_table
from processor.engine.flowset import FlowSet
from processor.engine.placement import Placement
from processor.engine.profiles import lookup
from processor.engine.registry import FlowRegistry
from processor.engine.status import WorkerStatus
from processor.engine.wakeups import DUE_TICK_S, WakeUps
from processor.errors import FlowhookError
from processor.flows.model import Flow
from processor.kafka import (
    ensure_topics,
    first_offset_at,
    idempotent,
    make_producer,
    send_with_retries,
    wait_for_broker,
)
from processor.logs import get_logger
from processor.ops.endpoint import Endpoint, Readiness, start_endpoint
from processor.ops.lag import LagSource, LagWatch
from processor.ops.metrics import WorkerMetrics
from processor.outage import BrokerWatch
from processor.records import invalid_copy
from processor.settings import Settings

log = get_logger(__name__)

# How long a fetch may wait at the broker for records. Faust creates its consumer with
# 1.5 s, and the embedded broker holds a fetch about that long unless it fills, so records
# waited ~0.5-1.5 s before the agent saw them (processor alone at 1,000 events/s: p50
# 447 ms, p99 782 ms); with 10 ms (and 5 ms batches): p50 16-28 ms at the same CPU per record.
FETCH_MAX_WAIT_MS: Final = 10


class EngineCrashed(FlowhookError):
    """The worker's Faust app crashed; the process should exit and be restarted."""


class Engine:
    """One processor worker: build with settings, then `await run(stop)`."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = settings.topics
        self.partitions = settings.partitions
        self.status = WorkerStatus()
        self.flows = FlowSet()
        self.metrics = WorkerMetrics("processor")
        self.registry = FlowRegistry(
            settings, self.flows, on_change=self.on_flow_change, on_refused=self._flow_refused
        )
        self.registry.refused = self.metrics.refused
        self.app = make_app(settings)
        self.table = make_table(self.app, settings, self._catch_up, self._recovered)
        self.wakeups = WakeUps(self.app, self.topics.wakeups, self.flows, clock, self.status.fail)
        self._kinds = self._input_kinds()
        # No input record is committed unprocessed (see faust_compat.install_input_guards).
        faust_compat.install_input_guards(self.app, self._kinds, self._first_offset_at)
        self.placement = Placement(settings.partitions, {
            self.topics.events: self.topics.events_repartition,
            self.topics.profiles: self.topics.profiles_repartition,
        })
        self.misplaced = self.placement.counter  # records forwarded to their home partition
        self.batch_path = BatchPath(
            app=self.app, table=self.table, topics=self._batch_topics(), flows=self.flows,
            clock=clock, due=self.wakeups.due, metrics=self.metrics, status=self.status,
        )
        self._flows_producer: AIOKafkaProducer | None = None
        self._lag = LagWatch(self._lag_sources)
        self.metrics.on_lag(self._lag.samples)
        self._wire()

    def _input_kinds(self) -> dict[str, RecordKind]:
        topics = self.topics
        return {
            topics.events: "event",
            topics.profiles: "profile",
            topics.wakeups: "wakeup",
            topics.events_repartition: "event",
            topics.profiles_repartition: "profile",
        }

    def _batch_topics(self) -> Topics:
        return Topics(
            kinds=self._kinds,
            outputs={"webhook": self.topics.webhooks, "result": self.topics.results},
            invalid=self.topics.events_invalid,
            placement=self.placement,
        )

    def _wire(self) -> None:
        source = input_topic(self.app, self.settings, list(self._kinds))
        self.app.agent(source, name="flowhook-engine")(self.batch_path.agent)
        self.app.timer(DUE_TICK_S)(self._tick)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # async receivers work; Faust's type says sync

    # --- shared state, as the rest of the project reads it -----------------------------

    @property
    def ready(self) -> bool:
        return self.status.ready

    @property
    def owned(self) -> set[int]:
        return self.status.owned

    @property
    def failure(self) -> BaseException | None:
        return self.status.failure

    @property
    def processed(self) -> int:
        return self.batch_path.processed

    # --- table recovery and rebalances -------------------------------------------------

    async def _catch_up(self, table: Any, active_tps: set[TP]) -> None:
        await changelog_tail.catch_up(self.settings, table, active_tps)

    def _recovered(self, table: Any, active_tps: set[TP]) -> None:
        self.wakeups.rebuild(table)  # in the background: ready does not wait for it
        self.status.owned = {tp.partition for tp in active_tps}
        self.status.ready = True

    async def _on_revoked(self, app: Any, revoked: Iterable[TP], **_: Any) -> None:
        # Not ready until the next recovery completes (Faust recovers after every rebalance).
        self.status.ready = False
        self.status.owned = set()
        self.wakeups.drop(revoked)
        faust_compat.forget_processed(self.app, revoked)

    async def _first_offset_at(self, tp: TP, offset: int) -> int | None:
        return await first_offset_at(self.settings, TopicPartition(tp.topic, tp.partition), offset)

    def on_flow_change(self, flow: Flow | None) -> None:
        self.wakeups.on_flow_change(flow, self.table, self.status.ready)

    def rebuild_due_index(self, table: EngineTable) -> None:
        self.wakeups.rebuild(table)

    async def _tick(self) -> None:
        # Checked on every tick, not once: the consumer may not exist yet at start, and a
        # consumer Faust creates again (its thread restarted under load) starts at 1.5 s.
        if faust_compat.fetch_wait_ms(self.app) != FETCH_MAX_WAIT_MS:
            faust_compat.shorten_fetch_wait(self.app, FETCH_MAX_WAIT_MS)
        await self.wakeups.tick()

    async def _flow_refused(self, record: Any, reason: str) -> None:
        """A flow record the registry refused: copied aside like any unusable input."""
        value = records.encode(invalid_copy(record, reason))
        try:
            if self._flows_producer is None:  # flows are read before Faust's producer exists; rare
                self._flows_producer = make_producer(self.settings)
                await self._flows_producer.start()
            await send_with_retries(self._flows_producer, self.topics.events_invalid, record.key, value,
                                    source=f"{record.topic}/{record.partition}/{record.offset}")
        except Exception as exc:  # stop the worker (see `_wait`): the record is not skipped silently
            self.status.failure = exc
            raise

    # --- worker endpoint --------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready once connected, with partitions assigned and their state recovered."""
        details = {"partitions": sorted(self.owned), "flows": len(self.flows),
                   "refused_flows": dict(self.registry.refused),
                   "due_index": "rebuilding" if self.wakeups.rebuilding else "complete"}
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
        """A profile's stored state, read the way the agent reads it (see `BatchPath._load`)."""
        faust_compat.set_current_event(_LookupRef(SimpleNamespace(partition=partition)))
        raw: bytes | None = self.table.get(key)
        return raw

    async def lookup_profile(self, profile_id: str) -> tuple[int, dict[str, Any]]:
        return lookup(self, profile_id)

    def _lag_sources(self) -> list[tuple[LagSource, Iterable[str] | None]]:
        # Faust's consumer, not the aiokafka one inside it: that one runs on Faust's
        # consumer thread, and Faust's `position` asks it there.
        return [(self.app.consumer, self._kinds)]

    def _endpoint(self) -> Endpoint:
        return Endpoint(self.metrics, self.readiness, healthy=self.healthy,
                        profiles=self.lookup_profile, token=self.settings.endpoint_token)

    # --- running --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Check the library versions, start the endpoint, create topics, load flows, start
        the app; stop gracefully when `stop` is set."""
        faust_compat.check_versions()
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
            faust_compat.make_idempotent(self.app)
        _make_dirs(Path(self.app.conf.datadir))
        await self.registry.start()
        await self.registry.wait_loaded()
        await self.app.start()
        faust_compat.quiet_sensors(self.app)
        faust_compat.shorten_fetch_wait(self.app, FETCH_MAX_WAIT_MS)
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
            log.info("processor_stopped", processed=self.processed, batches=self.batch_path.batches,
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
                async with asyncio.timeout(0.5):
                    await stop.wait()


class _LookupRef:
    """Stands in for a Faust event when reading the table outside the agent: the RocksDB
    store finds a key's partition database through `current_event().message.partition`."""

    def __init__(self, message: SimpleNamespace) -> None:
        self.message = message


def _make_dirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def run_processor(settings: Settings, stop: asyncio.Event | None = None) -> Engine:
    """Run one processor worker in this event loop until `stop` is set (forever if None)."""
    engine = Engine(settings)
    await engine.run(stop or asyncio.Event())
    return engine
