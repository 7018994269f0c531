"""Consumer lag: live, per assigned partition, for the workers' metrics; and per consumer
group and topic from committed offsets, for `flowhook lag`.

Live lag is the partition's high watermark minus the consumer's fetch position, read every
`REFRESH_S` by a background task (the scrape only reads the cached figures). The embedded
broker reports end offsets up to one batch short, so a lag there can read a little low;
negative figures are shown as 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processor.kafka import make_reader, topic_plan
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["GroupLag", "LagSource", "LagWatch", "group_lags", "live_lag"]

REFRESH_S: Final = 1.0

Lags = dict[tuple[str, str], float]  # (topic, partition) -> records behind


class LagSource(Protocol):
    """A consumer whose lag can be read from the caller's event loop: an aiokafka consumer
    running on that loop, or Faust's consumer (its `position` runs on the thread that owns
    the aiokafka consumer inside; awaiting that one's `position` from here would drive it
    from the wrong loop)."""

    def assignment(self) -> Any: ...
    def highwater(self, tp: Any) -> int | None: ...
    async def position(self, tp: Any) -> int | None: ...


Sources = Callable[[], list[tuple[LagSource, Iterable[str] | None]]]


async def live_lag(consumer: LagSource, topics: Iterable[str] | None = None) -> Lags:
    """Lag of each partition assigned to `consumer` (optionally only of `topics`)."""
    wanted = None if topics is None else set(topics)
    lags: Lags = {}
    for tp in consumer.assignment():
        if wanted is not None and tp.topic not in wanted:
            continue
        end = consumer.highwater(tp)
        if end is None:  # nothing fetched from it yet
            continue
        position = await consumer.position(tp)
        if position is None:
            continue
        lags[(tp.topic, str(tp.partition))] = float(max(0, end - position))
    return lags


class LagWatch:
    """Refreshes the lag of some consumers in the background; `samples()` for the scrape."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self.lags: Lags = {}
        self._task: asyncio.Task[None] | None = None

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return list(self.lags.items())

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="flowhook-lag-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        lags: Lags = {}
        for consumer, topics in self._sources():
            lags.update(await live_lag(consumer, topics))
        self.lags = lags

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a rebalance under way: the next round reads again
                log.debug("lag_refresh_failed", error=repr(exc))
            await asyncio.sleep(REFRESH_S)


@dataclass(frozen=True)
class GroupLag:
    """What one consumer group has committed on one topic, against the topic's end."""

    group: str
    topic: str
    partitions: int
    committed: int  # sum of committed offsets
    end: int  # sum of end offsets
    lag: int  # sum over partitions of end - committed (a partition with no commit counts fully)

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "partitions": self.partitions,
                "committed": self.committed, "end": self.end, "lag": self.lag}


async def group_lags(settings: Settings, groups: Iterable[str] | None = None) -> list[GroupLag]:
    """Committed lag per consumer group and topic, over Flowhook's topics, for Flowhook's groups
    (those named with the topic prefix) or for the named groups."""
    if groups is None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers, client_id="flowhook-lag")
        await admin.start()
        try:
            listed = await admin.list_consumer_groups()
        finally:
            await admin.close()
        groups = sorted(g[0] for g in listed if g[0].startswith(settings.topic_prefix))
    ends = await _end_offsets(settings, list(topic_plan(settings)))
    rows: list[GroupLag] = []
    for group in groups:
        rows.extend(_fold(group, await _committed(settings, group, list(ends)), ends))
    return rows


async def _end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    reader = make_reader(settings)
    await reader.start()
    try:
        await reader.topics()  # metadata of every topic
        tps = [TopicPartition(t, p) for t in topics for p in sorted(reader.partitions_for_topic(t) or ())]
        return await reader.end_offsets(tps) if tps else {}
    finally:
        await reader.stop()


async def _committed(settings: Settings, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offsets. A consumer of the group that never joins it asks the
    coordinator per partition (the admin client's offset fetch trips the embedded broker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    return {tp: offset for tp, offset in found.items() if offset is not None and offset >= 0}


def _fold(
    group: str, committed: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> list[GroupLag]:
    """One row per topic the group has committed on; its partitions without a commit count fully."""
    rows = []
    for topic in sorted({tp.topic for tp in committed}):
        tps = [tp for tp in ends if tp.topic == topic]
        done = [committed.get(tp, 0) for tp in tps]
        end = [ends[tp] for tp in tps]
        lag = sum(max(0, e - d) for e, d in zip(end, done, strict=True))
        rows.append(GroupLag(group, topic, len(tps), sum(done), sum(end), lag))
    return rows
