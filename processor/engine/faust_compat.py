"""Every reach into private internals of faust-streaming, mode-streaming and aiokafka.

Nothing else in the package touches a private attribute of these libraries (ruff's SLF001
is on, and tests/test_engine_faust_compat.py scans for string-named reaches). Each reach is
one small function below, with why we need it and the version it was checked against;
the contract tests in tests/test_engine_faust_compat.py pin the behaviour each one relies
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
from collections.abc import Callable, Collection, Mapping
from importlib import metadata
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError
from faust.streams import _current_event  # private: see set_current_event
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from processor.engine.offsets import GapCheck, StallWatch, contiguous_end
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
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # noqa: SLF001
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
    extra = producer._settings_extra  # noqa: SLF001
    producer._settings_extra = lambda: {**extra(), "enable_idempotence": True}  # noqa: SLF001


def producer_options(app: faust.App) -> Mapping[str, Any]:
    """The extra aiokafka options Faust's producer will be created with (see `make_idempotent`)."""
    options: Mapping[str, Any] = app.producer._settings_extra()  # noqa: SLF001
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


# --- Faust: fetch and commit guards for the input partitions ------------------------------
#
# Three holes in Faust's fetch and commit path let records of an input partition be
# committed without being processed. All were seen on Apache Kafka in the crash test
# (tests/test_crash_repeats.py: up to 252 of 3,001 events never processed, in about one
# run in three on a loaded machine), and all are closed for the input topics only:
#
# 1. Seeking back to a partition without a commit. In a rebalance Faust discards records it
#    fetched while its flow was stopped and seeks every partition back to its committed
#    offset (`Consumer.perform_seek` -> the thread's `seek_to_committed`); aiokafka's
#    `seek_to_committed` moves only partitions whose commit is above 0, so a partition with
#    none stayed past the discarded records. Those now go to their beginning.
# 2. Gaps taken for missing offsets. When a record's offset jumps past the last one read,
#    Faust assumes the offsets between hold no record (compaction, transaction markers) and
#    counts them as acknowledged (`Consumer._add_gap`). After a rebalance the fetch position
#    can run ahead of the last offset read, so unprocessed records were committed over. A
#    gap is now fetched again first; only one still there on the second read is real.
#    After a seek Faust also records the committed offset as the last one read, though it
#    is the next one to read, so a record skipped right there did not show as a gap: the
#    last offset read is set one back.
# 3. Commits past a missing head. Faust's commit offset (`Consumer._new_offset`) lets the
#    first acknowledged offset be one past the committed one, so a record read but never
#    acknowledged (its queue cleared in a rebalance) was committed over. Input partitions
#    now commit only an unbroken run from the committed offset (real gaps count as done);
#    a head still missing after a few commits, with nothing of the partition on its way
#    through the streams, is fetched again.
#
# Checked: faust-streaming 0.15.3 (faust/transport/consumer.py `Consumer.perform_seek`,
# `_add_gap`, `_drain_messages`, `_new_offset`, `_acked`, `_acked_index`,
# `_committed_offset`, `_read_offset`, `_unacked_messages`, `seek`; faust/transport/drivers/
# aiokafka.py `AIOKafkaConsumerThread.seek_to_committed`, `_ensure_consumer`, `call_thread`)
# and aiokafka 0.14.0 (`AIOKafkaConsumer.seek_to_committed`). Pinned by
# tests/test_engine_offsets.py.


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


class _ReadAgain(BaseException):
    """Raised from Faust's gap bookkeeping to leave its fetch loop before the record after
    the gap is handed on. A BaseException so that the loop's `except Exception` (which logs
    a traceback and re-raises) lets it pass; `install_input_guards` catches it."""

    def __init__(self, tp: Any, first_missing: int) -> None:
        super().__init__(tp, first_missing)
        self.tp = tp
        self.first_missing = first_missing


def install_input_guards(input_topics: Collection[str]) -> None:
    """Close the three holes above for the partitions of `input_topics` (one processor per
    process: the patches are on Faust's classes)."""
    topics = frozenset(input_topics)
    known_gaps: dict[Any, set[int]] = {}
    _guard_seek(topics)
    _guard_gaps(topics, GapCheck(), known_gaps)
    _guard_commits(topics, StallWatch(), known_gaps)


def _guard_seek(topics: frozenset[str]) -> None:
    perform_seek = Consumer.perform_seek

    async def seek_to_committed(self: Any) -> Mapping[TopicPartition, int | None]:
        consumer = self._ensure_consumer()
        result: Mapping[TopicPartition, int | None] = await self.call_thread(
            seek_to_committed_or_beginning, consumer, topics
        )
        return result

    async def _perform_seek(self: Any) -> None:
        await perform_seek(self)
        read_offset = self._read_offset
        for tp, offset in list(read_offset.items()):
            if tp.topic in topics:
                self._acked.setdefault(tp, [])
                if offset is not None:
                    read_offset[tp] = offset - 1  # the last offset read; -1 before a partition's first

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]


def _guard_gaps(topics: frozenset[str], check: GapCheck, known_gaps: dict[Any, set[int]]) -> None:
    add_gap = Consumer._add_gap  # noqa: SLF001
    drain_messages = Consumer._drain_messages  # noqa: SLF001

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in topics:
            await add_gap(self, tp, offset_from, offset_to)
        elif check.read_again(tp, offset_from):
            raise _ReadAgain(tp, offset_from)
        else:  # still there on the second read: offsets that hold no record
            log.info("input_gap_real", topic=tp.topic, partition=tp.partition, offset=offset_from,
                     records=offset_to - offset_from)
            known_gaps.setdefault(tp, set()).update(range(offset_from, offset_to))

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        while True:
            try:
                await drain_messages(self, fetcher)
                return
            except _ReadAgain as gap:
                await _fetch_again(self, gap.tp, gap.first_missing, reason="gap")

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]  # noqa: SLF001
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]  # noqa: SLF001


def _guard_commits(topics: frozenset[str], stalls: StallWatch, known_gaps: dict[Any, set[int]]) -> None:
    new_offset = Consumer._new_offset  # noqa: SLF001
    fetches: set[asyncio.Future[None]] = set()  # kept until done (the loop holds tasks weakly)

    def _new_offset(self: Any, tp: Any) -> int | None:
        if tp.topic not in topics:
            result: int | None = new_offset(self, tp)
            return result
        acked = self._acked[tp]
        acked.sort()
        base = self._committed_offset[tp] or 0
        gaps = known_gaps.get(tp, set())
        commit, used = contiguous_end(acked, base, gaps)
        self._acked_index[tp].difference_update(acked[:used])
        del acked[:used]
        if commit is not None:
            gaps.difference_update(range(base, commit))
            stalls.moved(tp)
        elif _read_but_unacknowledged(self, tp, base) and stalls.stalled(tp, base):
            fetch = asyncio.ensure_future(_fetch_again(self, tp, base, reason="unacknowledged"))
            fetches.add(fetch)
            fetch.add_done_callback(fetches.discard)
        return commit

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]  # noqa: SLF001


def _read_but_unacknowledged(consumer: Any, tp: Any, base: int) -> bool:
    """The record at `base` was read (the last offset read is at or past it) and no record
    of the partition is still on its way through the streams."""
    read = consumer._read_offset.get(tp)  # noqa: SLF001
    if read is None or read < base:
        return False
    return not any(message.tp == tp for message in consumer._unacked_messages)  # noqa: SLF001


async def _fetch_again(consumer: Any, tp: Any, first_missing: int, *, reason: str) -> None:
    """Seek `tp` back to the first missing offset; the last offset read goes just before it,
    so that a real gap shows again on the second read."""
    log.warning("input_read_again", topic=tp.topic, partition=tp.partition, offset=first_missing,
                reason=reason)
    try:
        await consumer.seek(tp, first_missing)
    except IllegalStateError:
        return  # revoked meanwhile: its next owner starts from the committed offset
    consumer._read_offset[tp] = first_missing - 1  # noqa: SLF001
