"""Kafka edge helpers shared by every worker and tool: topics, producers, reading.

Note on the embedded broker: it reports a partition's end offset as the base offset of
its last batch, so tools here never decide "read everything" from end offsets; they read
until the topic has been idle for a while, or until they have counted what they expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, TopicAlreadyExistsError

from processor import constants as c
from processor.errors import FlowhookError
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)


def topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic Flowhook creates -> (partitions, config); see `topic_configs` for retention.

    The profile-keyed input topics share one partition count so that one processor owns
    all of a profile's records; the flows topic is compacted and has one partition so
    every worker reads every definition in order.
    """
    t = settings.topics
    n = settings.partitions
    plan: dict[str, tuple[int, dict[str, str]]] = {
        name: (n, topic_configs(settings, suffix)) for name, suffix in _named_topics(settings)
    }
    plan[t.flows] = (1, topic_configs(settings, c.FLOWS))
    return plan


def _named_topics(settings: Settings) -> list[tuple[str, str]]:
    t = settings.topics
    named = [(t.events, c.EVENTS), (t.profiles, c.PROFILES), (t.wakeups, c.WAKEUPS),
             (t.events_repartition, c.EVENTS_REPARTITION), (t.profiles_repartition, c.PROFILES_REPARTITION),
             (t.webhooks, c.WEBHOOKS), (t.results, c.RESULTS), (t.events_invalid, c.EVENTS_INVALID),
             (t.dead_letter, c.DEAD_LETTER), (t.held, c.HELD), (t.audit, c.AUDIT)]
    return named + [(tier, "retry") for tier in t.retry_tiers]


def topic_configs(settings: Settings, suffix: str) -> dict[str, str]:
    """Per-topic configs: min ISR, record size and retention (docs/kafka.md explains each)."""
    configs = {
        "min.insync.replicas": str(settings.min_isr),
        "max.message.bytes": str(c.MAX_MESSAGE_BYTES),
    }
    if suffix == c.FLOWS:
        configs["cleanup.policy"] = "compact"
    else:
        configs["retention.ms"] = str(c.TOPIC_RETENTION_MS.get(suffix, c.DEFAULT_RETENTION_MS))
    return configs


class TopicsMissing(FlowhookError):
    """FLOWHOOK_CREATE_TOPICS=0 and a topic Flowhook needs is not there."""


async def ensure_topics(
    settings: Settings,
    names: Iterable[str] | None = None,
    extra: dict[str, tuple[int, dict[str, str]]] | None = None,
) -> None:
    """Create the topics that do not exist yet (all of them unless `names` is given), with
    `extra` topics (name -> partitions, configs) beside Flowhook's own (e.g. bench's).

    With `create_topics` off (admins create topics) it only checks they exist.
    """
    plan = {**topic_plan(settings), **(extra or {})}
    wanted = set(plan) if names is None else set(names)
    admin = make_admin(settings, "flowhook-admin")
    await admin.start()
    try:
        await remember_broker_kind(settings, admin)
        existing = set(await admin.list_topics())
        missing = sorted(name for name in wanted - existing if name in plan)
        if missing and not settings.create_topics:
            raise TopicsMissing(f"topics missing at {settings.brokers}: {', '.join(missing)} "
                                "(FLOWHOOK_CREATE_TOPICS=0; `flowhook topics plan` prints what to create)")
        new = [NewTopic(name, plan[name][0], settings.replication, topic_configs=plan[name][1])
               for name in missing]
        if new:
            # Another worker may create them between our list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            log.info("topics_created", topics=[t.name for t in new], replication=settings.replication)
    finally:
        await admin.close()


# Broker kind per bootstrap string, learnt by `ensure_topics` and `wait_for_broker`: the
# embedded broker (Tansu) says so in its cluster id and refuses idempotent producers.
_BROKER_KINDS: dict[str, str] = {}
EMBEDDED_CLUSTER_ID_PREFIX = "tansu"


async def remember_broker_kind(settings: Settings, admin: AIOKafkaAdminClient) -> str:
    """"embedded" or "kafka" for these brokers, from the cluster id (asked once)."""
    kind = _BROKER_KINDS.get(settings.brokers)
    if kind is None:
        cluster = await admin.describe_cluster()
        cluster_id = str(cluster.get("cluster_id") or "")
        kind = "embedded" if cluster_id.startswith(EMBEDDED_CLUSTER_ID_PREFIX) else "kafka"
        _BROKER_KINDS[settings.brokers] = kind
    return kind


def idempotent(settings: Settings) -> bool:
    """Idempotent producers where the broker has them: FLOWHOOK_IDEMPOTENCE, else what
    `remember_broker_kind` learnt (off while unknown: that works on every broker)."""
    if settings.idempotence is not None:
        return settings.idempotence
    return _BROKER_KINDS.get(settings.brokers) == "kafka"


def client_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security (SASL, TLS) options for every aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.brokers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    return options


class _AuthFailures(logging.Filter):
    """Keeps aiokafka's "Unable connect ...: SaslAuthenticationFailed" log record as the reason
    for the one-line error of `connect_failure`, instead of printing it as a second line."""

    last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, SaslAuthenticationFailed):
                _AuthFailures.last = str(arg)
                return False
        return True


logging.getLogger("aiokafka").addFilter(_AuthFailures())


def connect_failure(settings: Settings, exc: BaseException) -> str:
    """One line on why no connection: refused credentials (named, never the password) or unreachable."""
    reason = _AuthFailures.last
    if reason is not None and settings.security_protocol.startswith("SASL_"):
        return (f"Kafka at {settings.brokers} refused SASL user {settings.sasl_username!r} "
                f"({settings.sasl_mechanism}): {reason.split(': ', 1)[-1]}")
    return f"cannot reach Kafka at {settings.brokers}: {exc}"


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verify the brokers against FLOWHOOK_SSL_CAFILE (or the system's CAs)."""
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    return ssl.create_default_context(cafile=cafile)


def make_admin(settings: Settings, client_id: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings), client_id=client_id)


def make_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """acks=all; idempotent where the broker supports it (`idempotent`); requests never
    larger than what the topics take (constants.MAX_REQUEST_BYTES)."""
    options: dict[str, object] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": idempotent(settings),
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "max_request_size": c.MAX_REQUEST_BYTES,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, *topics: str, **options: object) -> AIOKafkaConsumer:
    """An aiokafka consumer with the brokers' address and security options."""
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


def make_reader(settings: Settings, *topics: str, **overrides: object) -> AIOKafkaConsumer:
    """A group-less consumer from the beginning of the topics (tools and tests)."""
    options: dict[str, object] = {
        **client_options(settings),
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
    **reader_options: object,
) -> AsyncIterator[ConsumerRecord]:
    """Yield the records of `topic` from the start; end once idle for `idle_s` (unless following)."""
    reader = make_reader(settings, topic, **reader_options)
    await reader.start()
    try:
        end = ReadEnd(idle_s, follow, stop)
        while True:
            batch = await reader.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    yield record
            if end.reached(bool(batch)):
                return
    finally:
        await reader.stop()


async def first_offset_at(settings: Settings, tp: TopicPartition, offset: int,
                          wait_ms: int = 2_000) -> int | None:
    """The first offset at or after `offset` of `tp` that holds a record, read by a consumer
    of its own (no group); None when none came within `wait_ms`."""
    reader = make_reader(settings)
    await reader.start()
    try:
        reader.assign([tp])
        reader.seek(tp, offset)
        batch = await reader.getmany(tp, timeout_ms=wait_ms, max_records=1)
        records = batch.get(tp, [])
        return records[0].offset if records else None
    finally:
        await reader.stop()


class ReadEnd:
    """When a tool's read of a topic ends: idle for `idle_s` (unless following), or `stop()`."""

    def __init__(self, idle_s: float, follow: bool, stop: Callable[[], bool] | None) -> None:
        self.idle_s, self.follow, self.stop = idle_s, follow, stop
        self.last_seen = time.monotonic()

    def reached(self, got_records: bool) -> bool:
        """Call after each fetch with whether it returned records."""
        if got_records:
            self.last_seen = time.monotonic()
        elif not self.follow and time.monotonic() - self.last_seen >= self.idle_s:
            return True
        return self.stop is not None and self.stop()


async def wait_for_broker(
    settings: Settings, wait_s: float = 20.0, stop: asyncio.Event | None = None
) -> bool:
    """Wait until the cluster answers a metadata request (True), or `stop` is set (False: a
    Ctrl-C while waiting is honoured at once); TimeoutError after `wait_s`; refused
    credentials end it at once (LoginRefused)."""
    stop = stop or asyncio.Event()
    deadline = time.monotonic() + wait_s
    last_error: Exception | None = None
    _AuthFailures.last = None
    while time.monotonic() < deadline and not stop.is_set():
        probe = asyncio.ensure_future(_probe(settings))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([probe, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await probe
            return False
        error = probe.exception()
        if error is None:
            return True
        if _AuthFailures.last is not None and settings.security_protocol.startswith("SASL_"):
            # Waiting does not make a password right.
            raise LoginRefused(connect_failure(settings, error)) from error
        if last_error is None:
            log.info("waiting_for_broker", brokers=settings.brokers, error=type(error).__name__)
        last_error = error  # type: ignore[assignment]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await stop.wait()
    if stop.is_set():
        return False
    raise TimeoutError(f"no Kafka broker answered at {settings.brokers}: {last_error!r}")


async def _probe(settings: Settings) -> None:
    admin = make_admin(settings, "flowhook-probe")
    try:
        await admin.start()
        await admin.list_topics()
        await remember_broker_kind(settings, admin)
    finally:
        await admin.close()


class LoginRefused(FlowhookError):
    """The brokers refused the SASL credentials."""


class CopyAsideFailed(FlowhookError):
    """A refused record's invalid-input copy could not be written: the worker stops."""


async def send_with_retries(
    producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes, *, source: str,
    tries: int = c.INVALID_COPY_TRIES,
) -> None:
    """Produce one record and wait for its ack, up to `tries` times with a growing pause;
    then raise CopyAsideFailed naming `source` (the refused record's topic/partition/offset)."""
    error: BaseException | None = None
    for attempt in range(tries):
        try:
            ack = await producer.send(topic, value, key=key)
            await ack
            return
        except KafkaError as exc:
            error = exc
            log.warning("copy_aside_retry", source=source, topic=topic, attempt=attempt + 1, error=repr(exc))
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
    raise CopyAsideFailed(
        f"cannot copy the refused record {source} to {topic} after {tries} tries ({error!r}); "
        f"stopping so that it is not skipped: fix the cause and restart"
    )
