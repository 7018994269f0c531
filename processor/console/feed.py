"""Keeping the index current: a group-less consumer of the topics the console shows.

Steps, once at start and then in a loop:

1. Make sure the topics exist, assign every partition of the results, webhooks,
   dead-letter, flows and audit topics to one group-less consumer.
2. Seek each partition to the next offset the index stored (a missing index file has
   none, so the consumer starts at the beginning of what the topics still hold: the index
   is rebuilt from Kafka, bounded by the topics' retention).
3. Fetch batches (at most 200 ms apart, so new records show within a second or two) and
   write each batch with its offsets in one SQLite transaction, off the event loop.
4. Every few minutes forget deliveries older than the retention, as the topics do.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.clock import now_ms
from processor.console import index
from processor.kafka import ensure_topics, make_admin, make_reader
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")
PRUNE_EVERY_S = 300.0


class IndexRunner:
    """The index file behind two one-thread executors: one writer (the feed), one reader (pages).

    SQLite in WAL mode lets the reader see the last committed batch while the writer adds
    the next one, so pages never wait for ingestion and the event loop never waits for SQLite.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-read")
        self._write_conn = index.connect(path)
        self._read_conn = index.connect(path)

    async def read(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, lambda: func(self._read_conn, *args))

    async def write(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, lambda: func(self._write_conn, *args))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._write_conn.close()
        self._read_conn.close()


def topic_roles(settings: Settings) -> index.TopicRoles:
    t = settings.topics
    return index.TopicRoles(results=t.results, webhooks=t.webhooks, dead_letter=t.dead_letter,
                            flows=t.flows, audit=t.audit)


class Feed:
    """The consumer that keeps an `IndexRunner` current; `caught_up` once a fetch came back empty."""

    def __init__(self, settings: Settings, runner: IndexRunner, *, retention_ms: int) -> None:
        self.settings = settings
        self.runner = runner
        self.retention_ms = retention_ms
        self.roles = topic_roles(settings)
        self.caught_up = asyncio.Event()
        self.ingested = 0

    async def run(self, stop: Callable[[], Awaitable[None]] | None = None) -> None:
        r = self.roles
        topics = [r.results, r.webhooks, r.dead_letter, r.flows, r.audit]
        await ensure_topics(self.settings, topics)
        consumer = make_reader(self.settings, fetch_max_wait_ms=200,
                               max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        try:
            await self._assign(consumer, topics)
            await self._loop(consumer)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer, topics: list[str]) -> None:
        parts = await _partitions(self.settings, topics)
        consumer.assign(parts)
        stored = await self.runner.write(index.stored_offsets)
        for tp in parts:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)  # below the log start? auto_offset_reset=earliest takes over
        log.info("console_index_assigned", partitions=len(parts), resumed=len(stored))

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        last_prune = 0.0
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            messages = [index.Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                        for records in batch.values() for m in records]
            if messages:
                self.ingested += await self.runner.write(index.ingest, self.roles, messages)
            else:
                self.caught_up.set()
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = time.monotonic()
                removed = await self.runner.write(index.prune, now_ms() - self.retention_ms)
                if removed:
                    log.info("console_index_pruned", deliveries=removed)


async def _partitions(settings: Settings, topics: list[str], wait_s: float = 15.0) -> list[TopicPartition]:
    """Every partition of `topics`, from the cluster's metadata (a new topic may take a moment to show).

    Asked through the admin client: a consumer without a subscription learns no topic's
    partitions from Apache Kafka (the embedded broker tells every client every topic).
    """
    admin = make_admin(settings, "flowhook-console")
    await admin.start()
    try:
        deadline = time.monotonic() + wait_s
        while True:
            known = {t["topic"]: sorted(p["partition"] for p in t["partitions"])
                     for t in await admin.describe_topics(topics) if not t["error_code"]}
            missing = [t for t in topics if not known.get(t)]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    if missing:
        log.warning("console_topics_without_partitions", topics=missing)
    return [TopicPartition(t, p) for t in topics for p in known.get(t, [])]


def open_runner(path: Path) -> IndexRunner:
    """An index runner; a damaged file is set aside and rebuilt from the topics."""
    try:
        return IndexRunner(path)
    except sqlite3.DatabaseError as exc:
        aside = Path(f"{path}.damaged")
        Path(path).replace(aside)
        log.warning("console_index_rebuilt", path=str(path), reason=str(exc), kept_as=str(aside))
        return IndexRunner(path)
