"""The embedded broker's workaround: reading a changelog past its reported end.

Why: Faust's recovery reads a changelog partition up to its high watermark, and the
embedded broker (Tansu) reports the end offset as the base offset of the last batch, so
records of a changelog partition's last batch can be missing after a restart or a
rebalance (tests/engine/test_engine_workers.py shows waiting runs lost that way: 12 records, end
reported as 1). After Faust's recovery the table (`faust_app.EngineTable`) calls
`catch_up` for its active changelog partitions: each is read again from that reported
end until it is idle and what is found is applied; applying changelog records again is
harmless (last write wins, in order). On brokers that report the true end this reads
nothing.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from processor.kafka import make_reader
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

CATCH_UP_IDLE_MS: Final = 300


async def catch_up(settings: Settings, table: faust.Table, active_tps: set[TP]) -> None:
    """Apply changelog records past the broker's reported end (see the module docstring)."""
    if not active_tps:
        return
    reader = make_reader(settings, enable_auto_commit=False)
    await reader.start()
    try:
        applied = await _read_tail(reader, table, active_tps)
    finally:
        await reader.stop()
    if applied:
        log.info("changelog_tail_applied", records=applied)


async def _read_tail(reader: AIOKafkaConsumer, table: faust.Table, active_tps: set[TP]) -> int:
    """Read each changelog partition from its reported end until idle; apply to the table."""
    tps = [TopicPartition(tp.topic, tp.partition) for tp in active_tps]
    reader.assign(tps)
    ends = await reader.end_offsets(tps)
    for tp in tps:
        reader.seek(tp, ends[tp])
    applied, idle_since = 0, time.monotonic()
    while time.monotonic() - idle_since < CATCH_UP_IDLE_MS / 1000:
        batch = await reader.getmany(timeout_ms=100)
        events = [_changelog_event(r) for recs in batch.values() for r in recs]
        if events:
            table.apply_changelog_batch(events)  # type: ignore[arg-type]  # stand-ins with the attributes read
            applied += len(events)
            idle_since = time.monotonic()
    return applied


def _changelog_event(record: Any) -> SimpleNamespace:
    """The few fields of a Faust event that the stores read when applying a changelog."""
    message = SimpleNamespace(
        key=record.key,
        value=record.value,
        partition=record.partition,
        offset=record.offset,
        topic=record.topic,
        tp=TP(record.topic, record.partition),
    )
    return SimpleNamespace(key=record.key, value=record.value, message=message)
