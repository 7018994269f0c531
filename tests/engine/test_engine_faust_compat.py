"""Contract tests of `engine.faust_compat`: each pins a behaviour of faust-streaming, mode
or aiokafka that the engine relies on, so an upgrade fails a named test here.

The running-worker tests share one processor worker (memory store) on the session broker,
started once for this module.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import ipaddress
import re
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP
from structlog.testing import capture_logs

from processor.engine import faust_compat
from processor.engine.app import FETCH_MAX_WAIT_MS, Engine
from processor.engine.faust_app import make_app
from processor.engine.placement import home_partition
from processor.ops.lag import live_lag
from processor.settings import Settings
from tests.engine_helpers import InProcessEngine, event, event_bytes, produce, publish_flows

ROOT = Path(__file__).resolve().parents[2]


# --- the start-up version check ----------------------------------------------------------


def test_installed_versions_are_the_known_ones() -> None:
    """The versions installed here are the ones the reaches were checked against."""
    assert faust_compat.check_versions() == []


def test_pins_in_pyproject_are_the_known_versions() -> None:
    """pyproject.toml pins exactly the versions KNOWN lists (an upgrade changes both)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0].strip(): d.split("==")[1].strip() for d in deps if "==" in d}
    assert {name: (pins.get(name),) for name in faust_compat.KNOWN} == faust_compat.KNOWN


@pytest.mark.parametrize("package", sorted(faust_compat.KNOWN))
def test_an_unknown_version_is_refused_in_one_line(package: str) -> None:
    """A version not in KNOWN stops the worker with one line: package, version found, known."""
    versions = {name: known[0] for name, known in faust_compat.KNOWN.items()} | {package: "9.9.9"}
    with pytest.raises(faust_compat.UnknownLibraryVersion) as caught:
        faust_compat.check_versions(versions.__getitem__, env={})
    message = str(caught.value)
    assert "\n" not in message
    assert f"{package} 9.9.9" in message
    assert f"known: {faust_compat.KNOWN[package][0]}" in message
    assert faust_compat.ALLOW_ENV in message


def test_a_missing_library_is_named() -> None:
    """A library that is not installed at all is refused by name."""
    def version_of(name: str) -> str:
        if name == "mode-streaming":
            raise faust_compat.metadata.PackageNotFoundError(name)
        return faust_compat.KNOWN[name][0]

    with pytest.raises(faust_compat.UnknownLibraryVersion, match="mode-streaming not installed"):
        faust_compat.check_versions(version_of, env={})


def test_the_override_runs_with_a_warning() -> None:
    """FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES=1 lets an unknown version run, logging a warning."""
    with capture_logs() as logs:
        problems = faust_compat.check_versions(lambda _name: "0.0.1", env={faust_compat.ALLOW_ENV: "1"})
    assert len(problems) == len(faust_compat.KNOWN)
    warned = [e for e in logs if e["event"] == "unknown_library_version"]
    assert len(warned) == len(faust_compat.KNOWN) and warned[0]["log_level"] == "warning"


# --- reaches that need no broker ---------------------------------------------------------


def test_the_current_event_we_set_is_the_one_faust_reads() -> None:
    """What `set_current_event` sets is what `faust.streams.current_event()` (used by the
    RocksDB store to pick a key's partition database) returns."""
    from faust.streams import current_event

    class Ref:
        message = None

    ref = Ref()
    faust_compat.set_current_event(ref)
    assert current_event() is ref


def test_the_fetcher_reads_the_fetch_wait_for_every_request() -> None:
    """aiokafka builds each fetch request from `Fetcher._fetch_max_wait_ms`, so setting it on a
    running consumer takes effect at the next fetch (and Faust still hard-codes 1.5 s)."""
    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in source
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)


async def test_idempotence_reaches_the_aiokafka_producer(settings: Settings) -> None:
    """`make_idempotent` makes the aiokafka producer Faust creates idempotent."""
    app = make_app(settings)
    assert not faust_compat.producer_options(app).get("enable_idempotence")
    faust_compat.make_idempotent(app)
    assert faust_compat.producer_options(app)["enable_idempotence"] is True
    producer = app.producer._new_producer()  # what Faust's producer service starts
    try:
        assert producer._txn_manager is not None  # aiokafka's idempotent-produce state
    finally:
        await producer.stop()


_BY_NAME = ("getattr", "setattr", "hasattr")


def test_no_private_reach_outside_the_adapter() -> None:
    """Outside faust_compat.py no module imports a private name of faust/mode/aiokafka or
    reaches one by a string (`getattr(x, "_name")`); ruff's SLF001 covers `x._name`."""
    found = []
    modules = list((ROOT / "processor").rglob("*.py"))
    assert len(modules) > 100, f"the scan found only {len(modules)} modules under {ROOT}"  # a moved ROOT
    for path in modules:
        if path.name == "faust_compat.py":
            continue
        text = path.read_text()
        if not re.search(r"attr\(|from (faust|mode|aiokafka)", text):
            continue  # neither kind of reach can be in it
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "faust", "mode", "aiokafka"
            ):
                found += [f"{path}: import {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in _BY_NAME:
                name = node.args[1] if len(node.args) > 1 else None
                if isinstance(name, ast.Constant) and str(name.value).startswith("_"):
                    found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_table_manager_start_we_replace_is_fausts_with_a_sleep() -> None:
    """Faust's `TableManager.on_start` is a 1 s sleep, then exactly what
    `PromptTableManager.on_start` does; the app is built with the prompt one."""
    from faust.tables import TableManager

    def body(function: Any) -> list[str]:
        lines = inspect.getsource(function).splitlines()[1:]
        return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()
                and not line.strip().startswith('"""')]

    fausts = body(TableManager.on_start)
    assert fausts[0] == "await self.sleep(1.0)"
    assert fausts[1:] == body(faust_compat.PromptTableManager.on_start)
    settings = Settings(brokers="127.0.0.1:1", topic_prefix="t.", data_dir=Path("/nonexistent"))
    assert make_app(settings).conf.TableManager is faust_compat.PromptTableManager


# --- one running worker ------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    """One processor worker for the module, with a flow for `Placed Order`."""
    settings = Settings(
        brokers=broker.bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=2,
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True,
        data_dir=tmp_path_factory.mktemp("compat") / "data", store="memory",
        session_timeout_ms=6_000, heartbeat_interval_ms=500, rebalance_timeout_ms=6_000,
        replication=broker.replication, idempotence=broker.kind == "kafka",
    )
    from tests.engine_helpers import definition, webhook

    await publish_flows(settings, definition("f", steps=[webhook("hook")]))
    async with InProcessEngine(settings) as running:
        await _until(lambda: running.engine.ready, "the worker never became ready")
        yield running.engine


async def _until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.asyncio(loop_scope="module")
async def test_table_recovery_reports_its_end(worker: Engine) -> None:
    """Faust calls the table's `on_recovery_completed` with the partitions it recovered: the
    worker becomes ready holding every input partition (it is the only member)."""
    assert worker.ready
    assert worker.owned == set(range(worker.partitions))


@pytest.mark.asyncio(loop_scope="module")
async def test_the_fetch_wait_we_shorten_is_set_on_the_running_consumer(worker: Engine) -> None:
    """Faust's aiokafka consumer is found, assigned the input topics, with our fetch wait."""
    consumer = faust_compat.aiokafka_consumer(worker.app)
    assert isinstance(consumer, AIOKafkaConsumer)
    assert {tp.topic for tp in consumer.assignment()} >= {worker.topics.events, worker.topics.wakeups}
    # Set at start, or by the next wake-up tick when the consumer was not there yet.
    await _until(lambda: faust_compat.fetch_wait_ms(worker.app) == FETCH_MAX_WAIT_MS,
                 "the fetch wait was never shortened", timeout_s=10)


@pytest.mark.asyncio(loop_scope="module")
async def test_faust_flushes_our_producer_before_committing_offsets(worker: Engine) -> None:
    """The aiokafka producer our outputs go to is flushed before every offset commit, and the
    commit is then visible in `committed_offsets` (what the outbox relies on)."""
    producer = faust_compat.aiokafka_producer(worker.app)
    consumer = faust_compat.aiokafka_consumer(worker.app)
    assert consumer is not None
    calls: list[str] = []
    flush, commit = producer.flush, consumer.commit

    async def recording_flush() -> None:
        calls.append("flush")
        await flush()

    async def recording_commit(*args: Any, **kwargs: Any) -> None:
        calls.append("commit")
        await commit(*args, **kwargs)

    producer.flush, consumer.commit = recording_flush, recording_commit  # type: ignore[method-assign]
    try:
        before = worker.processed
        await produce(worker.settings, worker.topics.events, [event_bytes(event("c1"))])
        await _until(lambda: worker.processed > before, "the event was never processed")
        await _until(lambda: _committed_events(worker) >= 1, "the event's offset was never committed")
    finally:
        producer.flush, consumer.commit = flush, commit  # type: ignore[method-assign]
    assert "commit" in calls
    assert all(calls[i - 1] == "flush" for i, call in enumerate(calls) if call == "commit"), calls


def _committed_events(worker: Engine) -> int:
    offsets = faust_compat.committed_offsets(worker.app)
    return sum(offsets.get(TP(worker.topics.events, p)) or 0 for p in range(worker.partitions))



@pytest.mark.asyncio(loop_scope="module")
async def test_the_monitor_is_out_of_the_per_record_sensors(worker: Engine) -> None:
    """Faust adds its Monitor to `app.sensors` when the app starts; after `quiet_sensors` the
    per-record hooks reach no sensor, while `app.monitor` stays for Faust's direct calls."""
    assert worker.app.monitor is not None
    assert worker.app.monitor not in set(worker.app.sensors)
    before = worker.app.monitor.messages_received_total
    processed = worker.processed
    await produce(worker.settings, worker.topics.events, [event_bytes(event("s1"))])
    await _until(lambda: worker.processed > processed, "the event was never processed")
    assert worker.app.monitor.messages_received_total == before


@pytest.mark.asyncio(loop_scope="module")
async def test_the_lag_watch_reads_positions_through_fausts_consumer(worker: Engine) -> None:
    """Faust's consumer answers the lag watch from this loop (its `position` runs on the
    consumer's own thread): a lag for each input partition read from, none negative."""
    await produce(worker.settings, worker.topics.events, [event_bytes(event(f"lag{n}", pid=f"lag{n}"))
                                                          for n in range(4)])
    lags: dict[tuple[str, str], float] = {}

    async def read() -> bool:
        lags.update(await live_lag(worker.app.consumer, [worker.topics.events]))
        return len(lags) == worker.partitions

    deadline = time.monotonic() + 20
    while not await read():
        assert time.monotonic() < deadline, lags
        await asyncio.sleep(0.2)
    assert all(lag >= 0 for lag in lags.values())


@pytest.mark.asyncio(loop_scope="module")
async def test_a_record_faust_drops_after_reading_is_read_again_not_committed_over(worker: Engine) -> None:
    """The fetch loop drops a record whose offset is below its last offset read, as after a
    seek raced by records fetched before it. Faust alone would commit past the dropped
    record once the next one is acknowledged (the first acknowledged offset may be one past
    the committed one); the guard holds the commit there, reads the record again and then
    commits all three."""
    tp = TP(worker.topics.events, 0)
    pid = next(f"drop{n}" for n in range(1000) if home_partition(f"drop{n}", worker.partitions) == 0)
    handled: list[tuple[int, bytes]] = []
    on_batch = worker.batch_path.on_batch

    async def recording(events: list[Any]) -> None:
        handled.extend((e.message.offset, e.message.value) for e in events if e.message.tp == tp)
        await on_batch(events)

    def committed() -> int:
        return faust_compat.committed_offsets(worker.app).get(tp) or 0

    worker.batch_path.on_batch = recording  # type: ignore[method-assign]
    try:
        await produce(worker.settings, tp.topic, [event_bytes(event("drop-first", pid=pid))])
        await _until(lambda: any(b'"drop-first"' in value for _, value in handled), "never handled")
        head = next(offset for offset, value in handled if b'"drop-first"' in value) + 1
        await _until(lambda: committed() >= head, "drop-first never committed")
        handled.clear()
        worker.app.consumer._read_offset[tp] = head + 1  # as a seek raced by the fetch loop leaves it
        await produce(worker.settings, tp.topic, [event_bytes(event(f"drop{n}", pid=pid)) for n in range(3)])
        await _until(lambda: committed() >= head + 3, "the three records were never committed", timeout_s=20)
    finally:
        worker.batch_path.on_batch = on_batch  # type: ignore[method-assign]
    assert head in {offset for offset, _ in handled}  # read again after the drop, before it was committed
