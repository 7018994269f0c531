"""The Faust app and the profile table, configured for the processor.

Only construction lives here: the app's settings (`make_app`), the table and its recovery
hook (`EngineTable`, `make_table`) and the input topic. What runs on them is in
`engine.batch_path` (the agent), `engine.wakeups` (the timer) and `engine.app` (lifecycle).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import faust
from faust.types import TP

from processor import constants as c
from processor import topic_plan
from processor.engine import faust_compat
from processor.kafka import ssl_context
from processor.settings import Settings
from processor.topic_plan import processor_app_id

TABLE_NAME: Final = topic_plan.TABLE_NAME

# RocksDB memory per partition database (a worker opens one per table partition it holds).
# Faust's defaults allow 3 x 64 MiB of memtables and a 2 GiB block cache per database: with
# 8 partitions and 200,000 profiles the worker reached 477 MiB and kept growing with the
# profile count. These bound it to about 2 x 8 + 16 = 32 MiB per partition.
ROCKSDB_OPTIONS: Final = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
}

# Below the 1 MiB a broker takes per batch by default (message.max.bytes), for topics an
# admin created without Flowhook's max.message.bytes.
PRODUCER_BATCH_BYTES: Final = 256 * 1024

CatchUp = Callable[[faust.Table, set[TP]], Awaitable[None]]
Recovered = Callable[[faust.Table, set[TP]], None]


class EngineTable(faust.Table):
    """The profile table: after Faust's recovery, a catch-up read past the changelog's
    reported end (`engine.changelog_tail`), then the worker is told which partitions it
    now holds (it rebuilds its due index and becomes ready)."""

    catch_up: CatchUp
    recovered: Recovered

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await self.catch_up(self, active_tps)
        await super().on_recovery_completed(active_tps, standby_tps)
        self.recovered(self, active_tps)


def make_table(app: faust.App, settings: Settings, catch_up: CatchUp, recovered: Recovered) -> EngineTable:
    """The profile table: raw bytes in and out, one changelog record per profile write."""
    table = EngineTable(
        app,
        name=TABLE_NAME,
        beacon=app.tables.beacon,
        default=None,
        # bytes in and out: the store and the changelog keep our own state bytes as they are
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"),
        partitions=settings.partitions,
        options=dict(ROCKSDB_OPTIONS) if settings.store == "rocksdb" else None,
        # Faust creates the changelog compacted, with the app's replication factor.
        extra_topic_configs=changelog_configs(settings),
    )
    table.catch_up, table.recovered = catch_up, recovered
    added: EngineTable = app.tables.add(table)  # type: ignore[assignment]  # Faust types it as its base
    return added


def input_topic(app: faust.App, settings: Settings, topics: list[str]) -> Any:
    """The agent's source: every input topic, raw bytes."""
    return app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=settings.partitions)


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of the table's changelog beyond Faust's compaction (docs/kafka.md)."""
    return {"min.insync.replicas": str(settings.min_isr), "max.message.bytes": str(c.MAX_MESSAGE_BYTES)}


def faust_credentials(settings: Settings) -> Any:
    """The same SASL/TLS set-up as every other client (`kafka.client_options`), as Faust's."""
    protocol = settings.security_protocol
    context = ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     ssl_context=context, mechanism=settings.sasl_mechanism)
    return faust.SSLCredentials(context) if context is not None else None


def make_app(settings: Settings) -> faust.App:
    """A quiet Faust app for these settings (memory or RocksDB store, short group timeouts)."""
    store = "memory://" if settings.store == "memory" else "rocksdb://"
    return faust.App(
        processor_app_id(settings),
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store=store,
        datadir=str(Path(settings.data_dir) / "processor"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=settings.create_topics,
        broker_credentials=faust_credentials(settings),
        producer_acks=-1,
        producer_max_request_size=c.MAX_REQUEST_BYTES,
        # Batch outputs and changelog writes a little: fewer, larger produce requests.
        producer_linger=0.005,
        # The batch path hands whole record batches to the producer (engine.outbound); with
        # aiokafka's 16 KiB default a batch of 1,000 events became ~200 producer batches,
        # each a future, a callback and an entry in the produce request.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        # Commit every second: offsets are the only thing that tells a worker taking over a
        # partition what was done, and a commit made during a rebalance may be refused, so
        # a shorter interval means fewer records read again (and outputs repeated) after one.
        broker_commit_interval=1.0,
        web_enabled=False,
        autodiscover=False,
        table_standby_replicas=0,
        # The embedded broker's short high watermarks can make a persisted offset look
        # "ahead" of the changelog; that is expected here, not corruption.
        recovery_consistency_check=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
        key_serializer="raw",
        value_serializer="raw",
        loghandlers=[],
        # The profile table is added before the app starts: no need for Faust's 1 s wait.
        TableManager=faust_compat.PromptTableManager,
    )
