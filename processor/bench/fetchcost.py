"""`flowhook bench --stages fetchcost`: the broker's CPU per fetch as a partition grows.

A long run on the embedded broker slows down at a steady rate while Apache Kafka does not
(docs/reliability.md#soak). This stage shows why, on either broker: one partition is
filled with single-record batches (the shape a producer with a short linger writes at a
modest rate) in steps, and after each step the broker's CPU is read around a number of
fetches of the partition's last record, and of a partition of the same records in
50-record batches. The figures are the broker process's CPU seconds (`bench.cpu`) divided by
the requests, so the client's own cost is not in them.
"""

from __future__ import annotations

import asyncio
from typing import Final

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.bench.scale import parse_counts
from processor.bench.stages import Bench, StageResult, broker_cpu_s
from processor.kafka import ensure_topics, make_producer, make_reader

FETCHES: Final = 200  # fetches per reading (CPU time is read in 10 ms ticks)
BIG_BATCH: Final = 50  # records per batch in the control partition
VALUE: Final = b"x" * 200  # about a webhook-due record's size


def parse_fetchcost_steps(text: str) -> tuple[int, ...]:
    """'1000,2000' -> (1000, 2000): rising multiples of the control's batch size."""
    steps = parse_counts("--fetchcost-batches", text)
    if any(step % BIG_BATCH for step in steps) or list(steps) != sorted(set(steps)):
        raise click.UsageError(f"--fetchcost-batches: rising multiples of {BIG_BATCH}, not {text!r}")
    return steps


async def run_fetch_cost_stage(bench: Bench, steps: tuple[int, ...]) -> list[StageResult]:
    """One result per step: the stored single-record batches of the partition at that reading."""
    settings = bench.settings()
    small = TopicPartition(f"{settings.topic_prefix}small-batches", 0)
    big = TopicPartition(f"{settings.topic_prefix}big-batches", 0)
    one_partition: dict[str, tuple[int, dict[str, str]]] = {small.topic: (1, {}), big.topic: (1, {})}
    await ensure_topics(settings, list(one_partition), extra=one_partition)
    producer = make_producer(settings, linger_ms=0)
    reader = make_reader(settings, fetch_max_wait_ms=100)
    await producer.start()
    await reader.start()
    results = []
    try:
        stored = 0
        for target in steps:
            produce_s = await _fill(bench, producer, small.topic, target - stored)
            for _ in range((target - stored) // BIG_BATCH):  # sent together: one batch
                await asyncio.gather(*[await producer.send(big.topic, VALUE, partition=0)
                                       for _ in range(BIG_BATCH)])
            produce_us = produce_s * 1e6 / (target - stored)
            stored = target
            small_us = await _fetch_cost(bench, reader, small, stored - 1)
            big_us = await _fetch_cost(bench, reader, big, stored - 1)
            result = StageResult(f"fetchcost: {stored:,} stored batches", FETCHES)
            result.note = (f"broker CPU per fetch of the last record {small_us:,.0f} µs; the same "
                           f"records in {BIG_BATCH}-record batches ({stored // BIG_BATCH:,} batches) "
                           f"{big_us:,.0f} µs; per single-record produce {produce_us:,.0f} µs")
            results.append(result)
    finally:
        await reader.stop()
        await producer.stop()
    return results


async def _fill(bench: Bench, producer: AIOKafkaProducer, topic: str, count: int) -> float:
    """Broker CPU seconds to store `count` records, one batch each (each send awaited)."""
    before = broker_cpu_s(bench.broker_pids)
    for _ in range(count):
        await producer.send_and_wait(topic, VALUE, partition=0)
    return broker_cpu_s(bench.broker_pids) - before


async def _fetch_cost(bench: Bench, reader: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> float:
    """Broker CPU µs per fetch starting at `offset` (a fresh fetch each time: seek drops the buffer)."""
    reader.assign([tp])
    await reader.getmany(tp, timeout_ms=1000)  # the partition's metadata and position, not measured
    before = broker_cpu_s(bench.broker_pids)
    for _ in range(FETCHES):
        reader.seek(tp, offset)
        await reader.getmany(tp, timeout_ms=2000, max_records=1)
    return (broker_cpu_s(bench.broker_pids) - before) * 1e6 / FETCHES
