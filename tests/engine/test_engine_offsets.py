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
from faust.types import AppT
from faust.types.tuples import Message

from processor.engine.faust_compat import seek_to_committed_or_beginning
from processor.engine.offsets import Progress, StallWatch
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


def test_faust_still_has_the_hooks_the_guards_wrap() -> None:
    """The guards wrap `Consumer._add_gap(tp, offset_from, offset_to)`, `Consumer._new_offset(tp)`
    and `Consumer.perform_seek()`, read Faust's offset bookkeeping, and count only events
    of the consumer's current generation (`Message.generation_id`,
    `App.consumer_generation_id`; faust-streaming 0.15.3): a Faust upgrade that renames or
    reshapes them fails here, by name."""
    assert list(inspect.signature(Consumer._add_gap).parameters) == ["self", "tp", "offset_from", "offset_to"]
    assert list(inspect.signature(Consumer.perform_seek).parameters) == ["self"]
    assert list(inspect.signature(Consumer._new_offset).parameters) == ["self", "tp"]
    used = {"_acked", "_acked_index", "_committed_offset", "_read_offset", "_unacked_messages"}
    assert used <= set(Consumer.__annotations__)
    assert "generation_id" in Message.__slots__
    assert "consumer_generation_id" in AppT.__annotations__


def test_a_commit_stops_at_the_first_offset_not_processed() -> None:
    """Only the unbroken run of processed offsets from the committed one is committed."""
    progress = Progress()
    progress.processed("p0", [10, 11, 12, 14])
    assert progress.commit_point("p0", 10) == 13
    assert progress.commit_point("p0", 13) is None  # 13 never processed: 14 waits
    assert progress.ahead("p0", 13)
    progress.processed("p0", [13])
    assert progress.commit_point("p0", 13) == 15


def test_a_missing_head_is_never_passed_over() -> None:
    """Faust would commit 13 here (the first acknowledged offset one past the committed one)."""
    progress = Progress()
    progress.processed("p0", [11, 12])
    assert progress.commit_point("p0", 10) is None
    assert progress.commit_point("p1", 0) is None  # nothing processed there at all


def test_offsets_below_the_commit_and_repeats_are_forgotten() -> None:
    """Records read again after a seek, and work of an earlier ownership, do not pile up."""
    progress = Progress()
    progress.processed("p0", [3, 4, 10, 10, 11])
    assert progress.commit_point("p0", 10) == 12
    assert not progress.ahead("p0", 0)


def test_offsets_without_a_record_count_as_done_and_revoked_partitions_as_not() -> None:
    """An independent read's holes let the commit pass; a revoke drops the partition's work."""
    progress = Progress()
    progress.processed("p0", [13])
    progress.no_record("p0", 10, 13)
    assert progress.commit_point("p0", 10) == 14
    progress.processed("p1", [0, 1])
    progress.forget(["p1"])
    assert progress.commit_point("p1", 0) is None


def test_a_passed_over_head_is_read_again_soon_then_checked() -> None:
    """Two commits with later records processed: read again; after two reads again, check it."""
    watch = StallWatch(skipped=2, idle=5, fetches=2)
    seen = [watch.missing("p0", 5, passed=True) for _ in range(6)]
    assert seen == [None, "fetch", None, "fetch", None, "check"]
    assert watch.missing("p0", 5, passed=True) is None  # counting starts again after a check


def test_a_head_only_read_waits_longer_and_a_commit_resets_the_count() -> None:
    """A record read but not processed may still be in Faust's buffers: five commits."""
    watch = StallWatch(skipped=2, idle=5, fetches=2)
    assert [watch.missing("p0", 5, passed=False) for _ in range(5)] == [None] * 4 + ["fetch"]
    watch.missing("p0", 6, passed=True)  # a new head starts a new count
    watch.moved("p0")
    assert watch.missing("p0", 6, passed=True) is None
