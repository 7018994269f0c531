"""Every reach into private internals of faust-streaming, mode-streaming and aiokafka.

Nothing else in the package touches a private attribute of these libraries (ruff's SLF001
is on, and tests/engine/test_engine_faust_compat.py scans for string-named reaches). Each reach is
one small function below, with why we need it and the version it was checked against;
the contract tests in tests/engine/test_engine_faust_compat.py pin the behaviour each one relies
on, so an upgrade fails a named test instead of losing outputs in production.

`check_versions` runs when a processor worker starts: it refuses versions not in KNOWN
(the exact versions pinned in pyproject.toml and read for these reaches), unless
FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES=1, which only logs a warning.

Checked against: faust-streaming 0.15.3, mode-streaming 0.7.1, aiokafka 0.14.0.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError
from faust.streams import _current_event  # private: see set_current_event
from faust.tables import TableManager
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from processor.engine.offsets import Progress, StallWatch
from processor.errors import ConfigError
from processor.logs import get_logger

log = get_logger(__name__)

# The versions whose internals the functions below were read against (pyproject.toml pins
# these exactly). Adding one means reading those internals again and running the contract
# tests on it.
KNOWN: Final[dict[str, tuple[str, ...]]] = {
    "faust-streaming": ("0.15.3",),
    "mode-streaming": ("0.7.1",),
    "aiokafka": ("0.14.0",),
}
ALLOW_ENV: Final = "FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES"


class UnknownLibraryVersion(ConfigError):
    """An installed faust-streaming, mode-streaming or aiokafka this code was not checked with."""


# --- start-up version check -----------------------------------------------------------


def check_versions(
    version_of: Callable[[str], str] = metadata.version, env: Mapping[str, str] = os.environ
) -> list[str]:
    """Refuse unknown versions of the three libraries (one line naming package, version
    found and versions known); with FLOWHOOK_ALLOW_UNKNOWN_LIBRARIES=1 warn instead.
    Returns the problems found (empty when every version is known)."""
    problems = [problem for name in KNOWN if (problem := _version_problem(name, version_of))]
    if not problems:
        return []
    if env.get(ALLOW_ENV, "").strip() in ("1", "true", "yes"):
        for problem in problems:
            log.warning("unknown_library_version", problem=problem, override=ALLOW_ENV)
        return problems
    raise UnknownLibraryVersion(f"{problems[0]} (set {ALLOW_ENV}=1 to run anyway, at your own risk)")


def _version_problem(name: str, version_of: Callable[[str], str]) -> str | None:
    known = KNOWN[name]
    try:
        found = version_of(name)
    except metadata.PackageNotFoundError:
        found = "not installed"
    if found in known:
        return None
    return f"{name} {found} is not a version the processor was checked with (known: {', '.join(known)})"


# --- Faust: the current event -----------------------------------------------------------


def set_current_event(event: Any) -> None:
    """Make `event` Faust's current event for this task.

    Why: the RocksDB store picks a key's partition database through
    `faust.streams.current_event().message.partition`; we read and write the table
    outside Faust's own stream iteration (a whole batch at once, and lookups from the
    worker endpoint), so we set what Faust would have set. Faust offers only the reader
    (`current_event`); the setter is the module's private ContextVar.
    Checked: faust-streaming 0.15.3, faust/streams.py `_current_event`.
    """
    _current_event.set(weakref.ref(event))


# --- Faust: the producer and the commit path ---------------------------------------------


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer inside Faust's producer service.

    Why: the engine hands whole record batches to it (`engine.outbound`), and it must be
    this producer, because Faust flushes it before it commits offsets (see
    `flushes_before_commit`): that keeps every output of a committed record on Kafka.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Producer._ensure_producer` (raises NotReady before the service started).
    """
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]  # noqa: SLF001  # private
    return producer


def committed_offsets(app: faust.App) -> Mapping[TP, int | None]:
    """The offsets Faust committed last, per topic partition (the next offset to read).

    Why: the outbox in each profile's state keeps outputs until their input record is
    committed; this tells which entries may go. Faust keeps the mapping only privately.
    Without it (another version) outbox entries live until their size and age bounds.
    Checked: faust-streaming 0.15.3, faust/transport/consumer.py
    `Consumer._committed_offset`, updated in `_commit_offsets` after each commit.
    """
    offsets: Mapping[TP, int | None] = getattr(app.consumer, "_committed_offset", None) or {}
    return offsets


def make_idempotent(app: faust.App) -> None:
    """Idempotent produce for Faust's producer (outputs and changelog).

    Why: every other producer is idempotent on brokers that support it
    (`kafka.idempotent`); Faust has no setting for it. Its producer takes extra aiokafka
    options from `_settings_extra` when it creates the aiokafka producer (that is how its
    transactions switch idempotence on), so this adds the option there.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Producer._settings_extra` and `_new_producer`.
    """
    producer = app.producer
    extra = producer._settings_extra  # type: ignore[attr-defined]  # noqa: SLF001  # private
    producer._settings_extra = lambda: {**extra(), "enable_idempotence": True}  # type: ignore[attr-defined]  # noqa: SLF001  # private


def producer_options(app: faust.App) -> Mapping[str, Any]:
    """The extra aiokafka options Faust's producer will be created with (see `make_idempotent`)."""
    options: Mapping[str, Any] = app.producer._settings_extra()  # type: ignore[attr-defined]  # noqa: SLF001  # private
    return options


# --- Faust / aiokafka: the consumer ------------------------------------------------------


def aiokafka_consumer(app: faust.App) -> AIOKafkaConsumer | None:
    """The aiokafka consumer inside Faust's consumer thread; None until it exists.

    Why: the lag watch asks it for positions and end offsets, and the fetch wait is set
    on it (`shorten_fetch_wait`). Faust exposes neither.
    Checked: faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py
    `Consumer._thread` (an AIOKafkaConsumerThread) and its `_consumer`.
    """
    thread = getattr(app.consumer, "_thread", None)
    consumer: AIOKafkaConsumer | None = getattr(thread, "_consumer", None)
    return consumer


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> bool:
    """Set how long a fetch of Faust's consumer may wait at the broker; False while the
    consumer is not there yet.

    Why: Faust creates its consumer with fetch_max_wait_ms=1500 and no setting for it; the
    embedded broker holds a fetch about that long unless it fills, so records waited up to
    1.5 s before the agent saw them. aiokafka's fetcher reads the value for every fetch
    request it builds, so setting it on a running consumer takes effect at the next fetch.
    Checked: aiokafka 0.14.0, aiokafka/consumer/fetcher.py `Fetcher._fetch_max_wait_ms`
    (read in `_get_actions_per_node`); faust-streaming 0.15.3 `_create_worker_consumer`.
    """
    fetcher = getattr(aiokafka_consumer(app), "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        return False
    fetcher._fetch_max_wait_ms = wait_ms  # noqa: SLF001
    return True


def fetch_wait_ms(app: faust.App) -> int | None:
    """The fetch wait Faust's consumer uses now (None while it does not exist)."""
    fetcher = getattr(aiokafka_consumer(app), "_fetcher", None)
    wait: int | None = getattr(fetcher, "_fetch_max_wait_ms", None)
    return wait


# --- Faust: per-record sensors -------------------------------------------------------------


def quiet_sensors(app: faust.App) -> None:
    """Stop Faust's Monitor from being called for every record.

    Why: Faust calls each sensor four times per record (message in, stream event in and
    out, message out); its Monitor counts and times every one (monotonic clock reads,
    dict and deque updates) for Faust's web views, which the processor does not serve: its
    metrics are its own (`ops.metrics`). Faust adds the Monitor to `app.sensors` when the
    app starts; removing it there (public `SensorDelegate.remove`) leaves the Monitor in
    place for Faust's direct calls (`app.monitor.on_tp_commit`).
    Checked: faust-streaming 0.15.3, faust/app/base.py `on_init_dependencies`.
    """
    app.sensors.remove(app.monitor)


# --- Faust: reading the whole table -------------------------------------------------------


def stored_values(table: faust.Table) -> Iterator[bytes | None]:
    """Every value the table's store holds for this worker's active partitions, as stored
    (bytes), for the due-index rebuild.

    Why: `table.data.values()` decodes each value through Faust's serializer registry
    (codec lookup, payload preparation) even for raw bytes; over a state of a million
    profiles that is seconds of the rebuild. The RocksDB store's own iteration is private
    (`_dbs_for_actives`, `_visible_values`: the active partitions' databases, without the
    offset key). The partition databases are listed first, so a rebalance that takes one
    out of the store's dict meanwhile does not break the iteration. The memory store is a
    dict: its values are copied out (references only), as the agent may add profiles
    while the rebuild runs.
    Checked: faust-streaming 0.15.3, faust/stores/rocksdb.py `Store._dbs_for_actives`,
    `_visible_values`; faust/stores/memory.py (a FastUserDict: `data` is the dict).
    """
    store = table.data
    actives = getattr(store, "_dbs_for_actives", None)
    if actives is None:
        return iter(list(store.data.values()))
    databases = list(actives())
    return (value for db in databases for value in store._visible_values(db))  # type: ignore[attr-defined]  # noqa: SLF001


# --- Faust: the table manager's start -------------------------------------------------------


class PromptTableManager(TableManager):
    """Faust's table manager without the second it waits at start.

    Why: `TableManager.on_start` sleeps 1.0 s before it registers the tables' changelog
    channels and starts recovery, so that tables an app defines late are still included.
    The engine adds its one table when it builds the app, before it starts, so that second
    is only part of every start and restart (about 1 s of a restart's 8 at 50,000 profiles).
    Used through Faust's public `TableManager` setting; the body below is Faust's without
    the sleep (`test_the_table_manager_start_we_replace_is_fausts_with_a_sleep`).
    Checked: faust-streaming 0.15.3, faust/tables/manager.py `TableManager.on_start`,
    `_update_channels`.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()  # Faust's own (private) step, as in its on_start
            await self.recovery.start()


# --- Faust: input offsets are committed only as far as the engine processed them ----------
#
# Faust's fetch and commit path lets records of an input partition be committed without
# being processed. Seen on Apache Kafka in the crash test (tests/test_crash_repeats.py: 8 to
# 252 of 3,001 events never processed in about one run in five) and read in the code:
#
# 1. Seeking back to a partition without a commit. In a rebalance Faust drops the records it
#    buffered (`app.flow_control.clear()`) and seeks every partition back to its committed
#    offset (`Consumer.perform_seek` -> the thread's `seek_to_committed`); aiokafka's
#    `seek_to_committed` moves only partitions whose commit is above 0, so a partition with
#    none stayed past the dropped records.
# 2. Offsets passed over taken for offsets holding no record. When a record's offset jumps
#    past the last one read, Faust counts the offsets between as acknowledged
#    (`Consumer._add_gap`: meant for compaction and transaction markers). A record can be
#    passed over in a rebalance: records already taken from aiokafka are dropped when
#    Faust's `getmany` stops early (flow stopped, generation changed); a seek runs while
#    the fetch loop still hands on records from before it, and the last offset read it then
#    sets makes the records read again look old (dropped as "DROPPED MESSAGE").
# 3. Records dropped after they were read. A stream drops an event of an older generation,
#    or one it takes while the flow is stopped, without handing it on (`skipped_value` in
#    faust/_cython/streams.pyx `_prepare_event`; the pure-Python twin even acknowledges
#    it); `Consumer._new_offset` lets the first acknowledged offset be one past the
#    committed one, passing a missing first one.
#
# So for the input topics Faust's acknowledgements are not used at all. The batch path
# reports what it processed (`mark_processed`, records of the current generation only);
# `Consumer._new_offset` commits the unbroken run of those from the committed offset
# (`offsets.Progress`); a partition stuck below a missing head is sought back to it, and if
# the head is still missing after that, an independent read (`first_offset_at`) checks
# whether it holds a record at all (`offsets.StallWatch`). Partitions without a commit go
# back to their beginning. Other topics keep Faust's own bookkeeping.
#
# Checked: faust-streaming 0.15.3 (faust/transport/consumer.py `Consumer.perform_seek`,
# `_add_gap`, `_new_offset`, `_acked`, `_acked_index`, `_committed_offset`, `_read_offset`,
# `_unacked_messages`, `seek`; faust/_cython/streams.pyx; faust/transport/drivers/
# aiokafka.py `AIOKafkaConsumerThread.seek_to_committed`, `_ensure_consumer`, `call_thread`;
# `Message.generation_id`, `App.consumer_generation_id`) and aiokafka 0.14.0
# (`AIOKafkaConsumer.seek_to_committed`). Pinned by tests/engine/test_engine_offsets.py.

FirstOffsetAt = Callable[[TP, int], Awaitable[int | None]]


class InputGuard:
    """One app's input topics, what its batch path processed, and its stalled partitions."""

    def __init__(self, topics: Collection[str], first_offset_at: FirstOffsetAt) -> None:
        self.topics = frozenset(topics)
        self.first_offset_at = first_offset_at
        self.progress = Progress()
        self.stalls = StallWatch()
        self.tasks: set[asyncio.Future[None]] = set()  # kept until done (the loop holds tasks weakly)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


_guards: weakref.WeakKeyDictionary[Any, InputGuard] = weakref.WeakKeyDictionary()
_installed = False


def install_input_guards(app: faust.App, input_topics: Collection[str],
                         first_offset_at: FirstOffsetAt) -> InputGuard:
    """Commit `app`'s input partitions only as far as `mark_processed` was told, as above.
    `first_offset_at(tp, offset)` reads the partition on its own (no group): the first
    offset at or after `offset` that holds a record, None when there is none yet."""
    global _installed
    guard = _guards[app] = InputGuard(input_topics, first_offset_at)
    if not _installed:  # the patches are on Faust's classes, once per process
        _patch_seek()
        _patch_gaps()
        _patch_commits()
        _installed = True
    return guard


def mark_processed(app: faust.App, events: Iterable[Any]) -> None:
    """The batch path handled these Faust events (outputs queued, state written). Events of
    an older generation are left out: their partition was sought back since, and a
    partition revoked and assigned again must not count work done before."""
    guard = _guards.get(app)
    if guard is None:
        return
    generation = app.consumer_generation_id
    by_tp: dict[TP, list[int]] = {}
    for event in events:
        message = event.message
        if message.generation_id == generation and message.topic in guard.topics:
            by_tp.setdefault(message.tp, []).append(message.offset)
    for tp, offsets in by_tp.items():
        guard.progress.processed(tp, offsets)


def forget_processed(app: faust.App, revoked: Iterable[TP]) -> None:
    """The partitions were revoked (Faust has committed what it could meanwhile)."""
    guard = _guards.get(app)
    if guard is not None:
        guard.progress.forget(revoked)


async def seek_to_committed_or_beginning(
    consumer: AIOKafkaConsumer, rewind_topics: Collection[str]
) -> Mapping[TopicPartition, int | None]:
    """Seek every assigned partition to its committed offset; partitions of `rewind_topics`
    without one (None or 0) go to their beginning. Returns the committed offsets, with the
    beginning in place of a missing one (nothing before it can be read)."""
    committed: dict[TopicPartition, int | None] = dict(await consumer.seek_to_committed())
    uncommitted = [tp for tp, offset in committed.items() if tp.topic in rewind_topics and not offset]
    if uncommitted:
        await consumer.seek_to_beginning(*uncommitted)
        committed.update(await consumer.beginning_offsets(uncommitted))
    return committed


def _patch_seek() -> None:
    perform_seek = Consumer.perform_seek
    seek_to_committed = AIOKafkaConsumerThread.seek_to_committed

    async def _seek_to_committed(self: Any) -> Mapping[TopicPartition, int | None]:
        guard = _guards.get(self.app)
        if guard is None:
            result: Mapping[TopicPartition, int | None] = await seek_to_committed(self)
            return result
        consumer = self._ensure_consumer()
        result = await self.call_thread(seek_to_committed_or_beginning, consumer, guard.topics)
        return result

    async def _perform_seek(self: Any) -> None:
        await perform_seek(self)
        guard = _guards.get(self.app)
        if guard is None:
            return
        read_offset = self._read_offset
        for tp, offset in list(read_offset.items()):
            if tp.topic in guard.topics:
                self._acked.setdefault(tp, [])  # so that every commit looks at the partition
                guard.progress.forget([tp])  # all from the committed offset on is read again
                # Faust records the committed offset as the last one read, though it is the
                # next one to read: the record there would be taken for an old one.
                read_offset[tp] = -1 if offset is None else offset - 1

    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]


def _patch_gaps() -> None:
    add_gap = Consumer._add_gap  # noqa: SLF001

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        guard = _guards.get(self.app)
        if guard is None or tp.topic not in guard.topics:
            await add_gap(self, tp, offset_from, offset_to)
        else:  # passed over, not missing: the commit stops there until it is processed
            log.info("input_offsets_passed_over", topic=tp.topic, partition=tp.partition,
                     offset=offset_from, records=offset_to - offset_from)

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]  # noqa: SLF001


def _patch_commits() -> None:
    new_offset = Consumer._new_offset  # noqa: SLF001

    def _new_offset(self: Any, tp: Any) -> int | None:
        guard = _guards.get(self.app)
        if guard is None or tp.topic not in guard.topics:
            result: int | None = new_offset(self, tp)
            return result
        self._acked[tp].clear()  # Faust's acknowledgements are not what counts here
        self._acked_index[tp].clear()
        base = self._committed_offset[tp] or 0
        commit = guard.progress.commit_point(tp, base)
        if commit is not None:
            guard.stalls.moved(tp)
        else:
            _watch_head(self, guard, tp, base)
        return commit

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]  # noqa: SLF001


def _watch_head(consumer: Any, guard: InputGuard, tp: Any, head: int) -> None:
    """The head of `tp` is not processed: read it again if it was passed over or read and
    dropped, with nothing of the partition still on its way through the streams."""
    passed = guard.progress.ahead(tp, head)
    read = consumer._read_offset.get(tp)  # noqa: SLF001
    if not (passed or (read is not None and read >= head)) or _in_flight(consumer, tp):
        guard.stalls.moved(tp)  # idle (the common case, checked first), or still on its way
        return
    action = guard.stalls.missing(tp, head, passed=passed)
    if action == "fetch":
        guard.spawn(_fetch_again(consumer, tp, head, "passed_over" if passed else "read_not_processed"))
    elif action == "check":
        guard.spawn(_check_head(consumer, guard, tp, head))


def _in_flight(consumer: Any, tp: Any) -> bool:
    """A record of `tp` is in a stream or a batch, not yet done."""
    return any(message.tp == tp for message in consumer._unacked_messages)  # noqa: SLF001


async def _fetch_again(consumer: Any, tp: Any, head: int, reason: str) -> None:
    """Seek `tp` back to its missing head; the last offset read goes just before it, so that
    the record there is not taken for one already read."""
    log.warning("input_read_again", topic=tp.topic, partition=tp.partition, offset=head, reason=reason)
    try:
        await consumer.seek(tp, head)
    except IllegalStateError:
        return  # revoked meanwhile: its next owner starts from the committed offset
    consumer._read_offset[tp] = head - 1  # noqa: SLF001


async def _check_head(consumer: Any, guard: InputGuard, tp: Any, head: int) -> None:
    """The head stayed missing after reading it again: does it hold a record at all?"""
    try:
        first = await guard.first_offset_at(tp, head)
    except Exception as exc:  # the brokers away, say: the next stall checks again
        log.warning("input_head_check_failed", topic=tp.topic, partition=tp.partition, offset=head,
                    error=repr(exc))
        return
    if first is not None and first > head:
        log.warning("input_offsets_hold_no_record", topic=tp.topic, partition=tp.partition,
                    offset=head, records=first - head)
        guard.progress.no_record(tp, head, first)
    else:
        await _fetch_again(consumer, tp, head, "still_missing")
