"""The guards that keep input records from being committed unprocessed
(processor/engine/offsets.py and `install_input_guards` in processor/engine/faust_compat.py).

The broker tests run on a real broker; the first pins the aiokafka behaviour the seek guard
works around, the last pins the Faust internals the guards wrap: if an upgrade changes
either, that test fails by name.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.consumer import Consumer

from processor.engine.faust_compat import seek_to_committed_or_beginning
from processor.engine.offsets import GapCheck, StallWatch, contiguous_end
from processor.kafka import ensure_topics
from processor.partitioner import murmur2
from processor.settings import Settings
from tests.engine_helpers import produce

pytestmark = pytest.mark.integration  # the bug was seen on Apache Kafka: run there too

RECORDS = 10
READ_FIRST = 6
Held = tuple[AIOKafkaConsumer, TopicPartition, TopicPartition]  # consumer, input partition, other


@pytest.fixture
async def consumer(settings: Settings) -> AsyncIterator[Held]:
    """A group consumer holding one partition of each of two topics with ten records each, having read
    the first six of each and committed nothing yet."""
    topics = [settings.topics.events, settings.topics.profiles]
    await ensure_topics(settings, topics)
    for topic in topics:
        await produce(settings, topic, [(b"k", b"%d" % n) for n in range(RECORDS)])
    tps = [TopicPartition(topic, _partition_of(settings)) for topic in topics]
    reader = AIOKafkaConsumer(bootstrap_servers=settings.brokers, group_id=f"rewind-{uuid.uuid4().hex[:8]}",
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign(tps)
        for tp in tps:
            await _read(reader, tp, READ_FIRST)
        yield reader, tps[0], tps[1]
    finally:
        await reader.stop()


def _partition_of(settings: Settings) -> int:
    """The partition key b"k" goes to (aiokafka's default partitioner, as `produce` uses)."""
    return (murmur2(b"k") & 0x7FFFFFFF) % settings.partitions


async def _read(reader: AIOKafkaConsumer, tp: TopicPartition, count: int) -> None:
    got = 0
    while got < count:
        batch = await reader.getmany(tp, timeout_ms=1000, max_records=count - got)
        got += len(batch.get(tp, []))


async def test_aiokafka_seek_to_committed_leaves_an_uncommitted_partition_where_it_is(
    consumer: Held,
) -> None:
    reader, tp, _ = consumer
    committed = await reader.seek_to_committed()  # aiokafka's own
    assert committed[tp] is None
    assert await reader.position(tp) == READ_FIRST  # the six records read are skipped for good


async def test_uncommitted_input_partitions_go_back_to_their_beginning(
    consumer: Held,
) -> None:
    reader, events, other = consumer
    committed = await seek_to_committed_or_beginning(reader, {events.topic})
    assert committed[events] == 0  # the beginning stands in for the missing commit
    assert await reader.position(events) == 0
    assert await reader.position(other) == READ_FIRST  # not an input topic here: left alone


async def test_committed_partitions_go_back_to_their_commit(
    consumer: Held,
) -> None:
    reader, events, _ = consumer
    await reader.commit({events: 3})
    committed = await seek_to_committed_or_beginning(reader, {events.topic})
    assert committed[events] == 3
    assert await reader.position(events) == 3


def test_a_gap_is_read_again_once_then_taken_as_real() -> None:
    check = GapCheck(capacity=2)
    assert check.read_again("p0", 10) is True  # first sight: fetch it again
    assert check.read_again("p0", 10) is False  # still there on the second read: real
    assert check.read_again("p0", 10) is True  # a new gap at the same place later
    check.read_again("p1", 5)
    check.read_again("p2", 7)  # over capacity: the oldest is forgotten
    assert check.read_again("p0", 10) is True


def test_faust_still_has_the_fetch_loop_hooks_the_gap_check_wraps() -> None:
    """The gap check wraps `Consumer._add_gap(tp, offset_from, offset_to)`,
    `Consumer._drain_messages(fetcher)` and `Consumer.perform_seek()` and sets
    `Consumer._read_offset` (faust-streaming 0.15.3): a Faust upgrade that renames or
    reshapes them fails here, by name."""
    assert list(inspect.signature(Consumer._add_gap).parameters) == ["self", "tp", "offset_from", "offset_to"]
    assert list(inspect.signature(Consumer._drain_messages).parameters) == ["self", "fetcher"]
    assert list(inspect.signature(Consumer.perform_seek).parameters) == ["self"]
    assert list(inspect.signature(Consumer._new_offset).parameters) == ["self", "tp"]
    used = {"_acked", "_acked_index", "_committed_offset", "_read_offset", "_unacked_messages"}
    assert used <= set(Consumer.__annotations__)


def test_a_commit_stops_at_the_first_offset_not_acknowledged() -> None:
    assert contiguous_end([10, 11, 12, 14], 10) == (13, 3)
    assert contiguous_end([11, 12], 10) == (None, 0)  # the head is missing: Faust would commit 13
    assert contiguous_end([8, 10, 10, 11], 10) == (12, 4)  # below the base and repeats are used up
    assert contiguous_end([12, 13], 10, known_gaps={10, 11}) == (14, 2)  # offsets holding no record
    assert contiguous_end([], 10) == (None, 0)


def test_a_head_missing_at_three_commits_in_a_row_is_fetched_again() -> None:
    watch = StallWatch(commits=3)
    assert [watch.stalled("p0", 5) for _ in range(3)] == [False, False, True]
    assert watch.stalled("p0", 5) is False  # counting starts again after a fetch
    watch.stalled("p0", 6)
    watch.moved("p0")  # a commit went through
    assert [watch.stalled("p0", 6) for _ in range(2)] == [False, False]
