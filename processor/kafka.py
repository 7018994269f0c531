"""Kafka edge helpers shared by every worker and tool: topics, producers, reading.

Note on the embedded broker: it reports a partition's end offset as the base offset of
its last batch, so tools here never decide "read everything" from end offsets; they read
until the topic has been idle for a while, or until they have counted what they expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)


def topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic Flowhook uses -> (partitions, config).

    The profile-keyed input topics share one partition count so that one processor owns
    all of a profile's records; the flows topic is compacted and has one partition so
    every worker reads every definition in order.
    """
    t = settings.topics
    n = settings.partitions
    plan: dict[str, tuple[int, dict[str, str]]] = {name: (n, {}) for name in t.keyed_by_profile}
    plan[t.flows] = (1, {"cleanup.policy": "compact"})
    for name in (t.webhooks, t.results, t.events_invalid, t.dead_letter, *t.retry_tiers, t.audit):
        plan[name] = (n, {})
    return plan


async def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> None:
    """Create the topics that do not exist yet (all of them unless `names` is given)."""
    plan = topic_plan(settings)
    wanted = set(plan) if names is None else set(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers, client_id="flowhook-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, plan[name][0], 1, topic_configs=plan[name][1])
            for name in sorted(wanted - existing)
            if name in plan
        ]
        if new:
            # Another worker may create them between our list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            log.info("topics_created", topics=[t.name for t in new])
    finally:
        await admin.close()


def make_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """acks=all without idempotence: the embedded broker refuses idempotent producers."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.brokers,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_reader(settings: Settings, *topics: str, **overrides: object) -> AIOKafkaConsumer:
    """A group-less consumer from the beginning of the topics (tools and tests)."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.brokers,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "group_id": None,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def read_records(
    settings: Settings,
    topic: str,
    *,
    idle_s: float = 2.0,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> AsyncIterator[ConsumerRecord]:
    """Yield the records of `topic` from the start; end once idle for `idle_s` (unless following)."""
    reader = make_reader(settings, topic)
    await reader.start()
    try:
        last_seen = time.monotonic()
        while True:
            batch = await reader.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    yield record
            if batch:
                last_seen = time.monotonic()
            elif not follow and time.monotonic() - last_seen >= idle_s:
                return
            if stop is not None and stop():
                return
    finally:
        await reader.stop()


async def wait_for_broker(settings: Settings, wait_s: float = 20.0) -> None:
    """Wait until the cluster answers a metadata request."""
    deadline = time.monotonic() + wait_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers, client_id="flowhook-probe")
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # any failure here means "not yet"
            last_error = exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    raise TimeoutError(f"no Kafka broker answered at {settings.brokers}: {last_error}")
