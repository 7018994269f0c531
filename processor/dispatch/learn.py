"""Learning the attempts already made from the results topic, when a lane takes over partitions.

A dispatcher taking over partition p of a lane reads partition p of the results topic (it is
keyed by delivery id like the webhooks topic and the retry tiers) from a little before the
first record it is to handle, and tells `dedupe.Attempts` what it finds, so what a crashed
predecessor finished is not sent again. The Kafka edge of `dedupe`.
"""

from __future__ import annotations

import contextlib
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.dispatch.dedupe import Attempts
from processor.logs import get_logger

log = get_logger(__name__)

__all__ = ["LEARN_MAX_S", "LEARN_SKEW_MS", "LEARN_TAIL_S", "read_attempts"]

# Results of a record are written after it was produced; this covers clock skew between hosts.
LEARN_SKEW_MS = 60_000
LEARN_TAIL_S = 0.1
# Learning only saves repeats, and the lane waits for it: a partition whose position never
# reaches the end taken at the start (a broker reporting an end it cannot serve) must not
# hold the lane for good. Past this, what was read so far is what is known.
LEARN_MAX_S = 15.0


async def read_attempts(
    reader: AIOKafkaConsumer, topic: str, since_ms: dict[int, int], into: Attempts
) -> None:
    """Read each partition from its start time to the end it had when we began (plus up to
    LEARN_TAIL_S more: the embedded broker reports the end as its last batch's first offset),
    never following new records: the processor keeps writing run results there."""
    tps = {TopicPartition(topic, p): max(0, at - LEARN_SKEW_MS) for p, at in since_ms.items()}
    reader.assign(list(tps))
    starts = await reader.offsets_for_times(tps)
    ends = await reader.end_offsets(list(tps))
    reading = {tp: ends[tp] for tp, found in starts.items() if found is not None and found.offset < ends[tp]}
    idle = [tp for tp in tps if tp not in reading]
    if idle:
        reader.pause(*idle)
    for tp in reading:
        reader.seek(tp, starts[tp].offset)
    learned, reached_at = 0, None
    cut_at = time.monotonic() + LEARN_MAX_S
    while reading and (reached_at is None or time.monotonic() - reached_at < LEARN_TAIL_S):
        if time.monotonic() > cut_at:
            behind = {f"{tp.partition}": end - await reader.position(tp) for tp, end in reading.items()}
            log.warning("attempts_learning_cut_short", after_s=LEARN_MAX_S, records_behind=behind)
            break
        batch = await reader.getmany(timeout_ms=100, max_records=5000)
        for recs in batch.values():
            for record in recs:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    into.learn(orjson.loads(record.value))
                learned += 1
        if not batch and reached_at is not None:
            break
        if reached_at is None and all(await _positions_reached(reader, reading)):
            reached_at = time.monotonic()
    log.info("attempts_learned", partitions=sorted(since_ms), results_read=learned, remembered=len(into))


async def _positions_reached(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[bool]:
    return [await reader.position(tp) >= end for tp, end in ends.items()]


