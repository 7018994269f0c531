"""Keeping Faust from skipping records of the processor's input partitions.

Three holes in Faust's fetch and commit path, all seen on Apache Kafka in the crash test
(tests/test_crash_repeats.py: up to 252 of 3,001 events never processed, in about one run in
three on a loaded machine), all closed here:

1. Seeking back to a partition without a commit. During a rebalance Faust discards records
   it fetched while its flow was stopped, then seeks every assigned partition back to its
   committed offset (`Consumer.perform_seek`, through the consumer thread's
   `seek_to_committed`). aiokafka's `seek_to_committed` only moves a partition whose
   committed offset is above 0, so a partition with no commit yet stayed past the discarded
   records. Input partitions without a commit now go to their beginning, which is what
   `auto_offset_reset="earliest"` means for them.
2. Gaps taken for missing offsets. When a fetched record's offset jumps past the last one
   read, Faust assumes the offsets between do not exist (compaction, transaction markers)
   and counts them as acknowledged (`Consumer._add_gap`), so the commit passes them. After a
   rebalance the fetch position can run ahead of the last offset read, and the records in
   between were then committed unprocessed. For an input partition a gap is now checked
   first: the partition is sought back to the first missing offset and fetched again; only
   a gap that is still there on the second read (a real one) is counted as Faust would.
   After a seek to the committed offsets Faust records that offset as the last one read,
   though it is the next one to read, so a record skipped right there would not show as a
   gap; the last offset read is set one back for the input partitions.
3. Commits past a missing head. Faust's commit offset (`Consumer._new_offset`) lets the
   first acknowledged offset be one past the committed one, so a record read but never
   acknowledged (its queue cleared in a rebalance) at the head was committed over. Input
   partitions now commit only an unbroken run from the committed offset (real gaps, found
   as above, count as done); a head still missing after a few commits, with nothing of
   the partition on its way through the streams, is fetched again.

Reaches, checked against faust-streaming 0.15.3 and aiokafka 0.14.0:
`AIOKafkaConsumerThread.seek_to_committed` (public; calls the aiokafka consumer's through
`call_thread`), `Consumer.perform_seek` (public), and the private
`AIOKafkaConsumerThread._ensure_consumer`, `Consumer._add_gap`, `Consumer._drain_messages`,
`Consumer._new_offset` and the offset bookkeeping it reads (`_acked`, `_acked_index`,
`_committed_offset`, `_read_offset`, `_unacked_messages`). `tests/test_engine_rewind.py`
pins the aiokafka and Faust behaviour this works around and the fixes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from processor.logs import get_logger

log = get_logger(__name__)

__all__ = ["GapCheck", "contiguous_end", "install", "seek_to_committed_or_beginning"]

GAPS_REMEMBERED: Final = 10_000  # gaps read once and waiting for their second read


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


def contiguous_end(acked: list[int], base: int, known_gaps: Collection[int] = ()) -> tuple[int | None, int]:
    """The offset to commit when the offsets from `base` on were acknowledged as in `acked`
    (sorted): one past the last of an unbroken run from `base`, offsets in `known_gaps` (real
    gaps) counting as done; None when the run is empty. Also how many entries of `acked` the
    run used up (including repeats and offsets below `base`)."""
    expected = base
    used = 0
    for offset in acked:
        while expected in known_gaps:
            expected += 1
        if offset > expected:
            break
        if offset == expected:
            expected += 1
        used += 1
    return (expected if expected > base else None), used


class GapCheck:
    """Which gaps were read a second time already: a gap still there then is a real one."""

    def __init__(self, capacity: int = GAPS_REMEMBERED) -> None:
        self.capacity = capacity
        self._read_once: dict[tuple[Any, int], None] = {}  # (partition, first missing offset)

    def read_again(self, tp: Any, first_missing: int) -> bool:
        """True the first time a gap starting at `first_missing` shows on `tp`: fetch it again."""
        key = (tp, first_missing)
        if key in self._read_once:
            del self._read_once[key]
            return False
        self._read_once[key] = None
        while len(self._read_once) > self.capacity:
            del self._read_once[next(iter(self._read_once))]
        return True


class _ReadAgain(BaseException):  # a signal, not an error
    """Raised from Faust's gap bookkeeping to leave its fetch loop. A BaseException so that the
    loop's `except Exception` (which logs a traceback and re-raises) lets it pass."""

    def __init__(self, tp: Any, first_missing: int) -> None:
        super().__init__(tp, first_missing)
        self.tp = tp
        self.first_missing = first_missing


def install(rewind_topics: Collection[str]) -> None:
    """Close both holes for the partitions of `rewind_topics` (one processor per process)."""
    topics = frozenset(rewind_topics)
    known_gaps: dict[Any, set[int]] = {}
    _install_seek_to_beginning(topics)
    _install_gap_check(topics, GapCheck(), known_gaps)
    _install_contiguous_commits(topics, known_gaps)


def _install_seek_to_beginning(topics: frozenset[str]) -> None:

    async def seek_to_committed(self: Any) -> Mapping[TopicPartition, int | None]:
        consumer = self._ensure_consumer()  # private in faust-streaming 0.15.3: the aiokafka consumer
        result: Mapping[TopicPartition, int | None] = await self.call_thread(
            seek_to_committed_or_beginning, consumer, topics
        )
        return result

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def _install_gap_check(topics: frozenset[str], check: GapCheck, known_gaps: dict[Any, set[int]]) -> None:
    add_gap = Consumer._add_gap
    drain_messages = Consumer._drain_messages
    perform_seek = Consumer.perform_seek

    async def _perform_seek(self: Any) -> None:
        # Faust sets the last offset read to the committed offset, which is the next one to
        # read: a skipped record there would not show as a gap. One back, it does.
        await perform_seek(self)
        for tp, offset in list(self._read_offset.items()):
            if tp.topic in topics:
                self._acked.setdefault(tp, [])  # the key makes Faust ask for its commit offset
                if offset is not None:
                    self._read_offset[tp] = offset - 1  # -1 at the start of a partition

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in topics:
            await add_gap(self, tp, offset_from, offset_to)
        elif check.read_again(tp, offset_from):
            raise _ReadAgain(tp, offset_from)  # before the record after the gap is handed on
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

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]


async def _fetch_again(consumer: Any, tp: Any, first_missing: int, *, reason: str) -> None:
    """Seek `tp` back to the first missing offset; the last offset read goes just before it,
    so that the gap, if it is real, shows again on the second read."""
    log.warning("input_read_again", topic=tp.topic, partition=tp.partition, offset=first_missing,
                reason=reason)
    try:
        await consumer.seek(tp, first_missing)
    except IllegalStateError:
        return  # revoked meanwhile: its next owner starts from the committed offset
    consumer._read_offset[tp] = first_missing - 1


STALLED_COMMITS: Final = 3  # commits in a row with the same first offset missing: fetch it again


def _install_contiguous_commits(topics: frozenset[str], known_gaps: dict[Any, set[int]]) -> None:
    """Commit an input partition only up to its first offset not acknowledged (Faust lets a
    commit pass one missing offset at the head); a record read but never acknowledged (its
    queue was cleared) is fetched again after a few commits."""
    new_offset = Consumer._new_offset
    stalled: dict[Any, tuple[int, int]] = {}  # partition -> (first missing offset, commits seen)
    fetches: set[asyncio.Future[None]] = set()  # kept until done (the loop holds tasks weakly)

    def _new_offset(self: Any, tp: Any) -> int | None:
        if tp.topic not in topics:
            result: int | None = new_offset(self, tp)
            return result
        acked = self._acked[tp]
        acked.sort()
        base = self._committed_offset[tp] or 0  # Faust keeps None for nothing committed
        gaps = known_gaps.get(tp, set())
        commit, used = contiguous_end(acked, base, gaps)
        self._acked_index[tp].difference_update(acked[:used])
        del acked[:used]
        if commit is not None:
            gaps.difference_update(range(base, commit))
            stalled.pop(tp, None)
        elif _read_but_unacknowledged(self, tp, base):
            _count_stall(self, tp, base)
        return commit

    def _count_stall(consumer: Any, tp: Any, base: int) -> None:
        first, seen = stalled.get(tp, (base, 0))
        seen = seen + 1 if first == base else 1
        stalled[tp] = (base, seen)
        if seen >= STALLED_COMMITS:
            stalled.pop(tp, None)
            fetch = asyncio.ensure_future(_fetch_again(consumer, tp, base, reason="unacknowledged"))
            fetches.add(fetch)
            fetch.add_done_callback(fetches.discard)

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


def _read_but_unacknowledged(consumer: Any, tp: Any, base: int) -> bool:
    """The record at `base` was read (the last offset read is past it) and no record of the
    partition is still on its way through the streams."""
    read = consumer._read_offset.get(tp)
    if read is None or read < base:
        return False
    return not any(message.tp == tp for message in consumer._unacked_messages)
