"""`flowhook bench --stages scale`: end to end with 1, 2 and 4 processors and as many
dispatchers, on 8 and 16 partitions.

On a machine whose cores the workers share, more processes cannot raise the rate much;
what the stage shows is the cost of spreading out — CPU per delivery per process kind,
the figure a machine with cores to spare divides by — and whether the rate holds. Each run
starts its workers on fresh topics, waits until their /readyz endpoints show every
partition assigned (so no rebalance falls inside the measurement), sends one warm-up
event through, then measures one end-to-end pass as fast as possible.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import click

from processor.bench.stages import Bench, StageResult, stop_all
from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess

GROUP_WAIT_S = 120.0


def parse_counts(option: str, text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); a clear error for anything but positive whole numbers."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise click.UsageError(f"{option}: comma-separated positive whole numbers, not {text!r}")
    return tuple(int(part) for part in parts)


def scale_plan(workers: tuple[int, ...], partitions: tuple[int, ...]) -> list[tuple[int, int]]:
    """(partitions, workers) for each run, partitions outermost; runs with more workers of a
    kind than partitions are left out (the extra ones would only stand by)."""
    return [(p, n) for p in partitions for n in workers if n <= p]


async def run_scale_stage(bench: Bench) -> list[StageResult]:
    config = bench.config
    return [await scale_run(bench, partitions, n)
            for partitions, n in scale_plan(config.scale_workers, config.scale_partitions)]


async def scale_run(bench: Bench, partitions: int, n: int) -> StageResult:
    settings = bench.settings().with_(partitions=partitions)
    await bench.prepare_flows(settings)
    # Each worker serves /readyz on a port of its own: that is how the run sees the groups settle.
    workers = [bench.worker(role, settings.with_(metrics_port=free_port()), name=f"{role}{i}").start()
               for role in ("processor", "dispatcher") for i in range(n)]
    try:
        ready = await wait_for_members(workers, partitions)
        await bench.warm_up(settings)
        name = f"scale: {n} processor{'s' * (n > 1)} + {n} dispatcher{'s' * (n > 1)}, {partitions} partitions"
        result = await bench.e2e_pass(settings, workers, name, f"scale{n}x{partitions}", None)
        if not ready:
            result.note = "; ".join(filter(None, [result.note, "groups not seen settled: a rebalance may "
                                                                "fall inside the measurement"]))
        return result
    finally:
        stop_all(workers)


async def wait_for_members(workers: list[WorkerProcess], partitions: int) -> bool:
    """Until every worker's /readyz says ready and the partitions are all shared out among
    the processors, and the first-try partitions among the dispatchers, twice in a row (no
    rebalance under way); False if not seen so within GROUP_WAIT_S."""
    deadline = time.monotonic() + GROUP_WAIT_S
    in_a_row = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline and all(w.alive for w in workers):
            bodies = [await readyz(session, w) for w in workers]
            in_a_row = in_a_row + 1 if settled(bodies, partitions) else 0
            if in_a_row >= 2:
                return True
            await asyncio.sleep(0.5)
    return False


def settled(bodies: list[dict[str, Any] | None], partitions: int) -> bool:
    """Every worker ready, and each kind's assignments add up to all `partitions`."""
    if not bodies or any(body is None or not body.get("ready") for body in bodies):
        return False
    owned = {"processor": 0, "dispatcher": 0}
    for body in bodies:
        assert body is not None
        assigned = body.get("partitions")
        if body.get("role") == "processor" and isinstance(assigned, list):
            owned["processor"] += len(assigned)
        elif body.get("role") == "dispatcher" and isinstance(assigned, dict):
            owned["dispatcher"] += int(assigned.get("first", 0))
    return owned == {"processor": partitions, "dispatcher": partitions}


async def readyz(session: aiohttp.ClientSession, worker: WorkerProcess) -> dict[str, Any] | None:
    """A worker's /readyz body; None while it does not answer yet."""
    try:
        async with session.get(f"http://127.0.0.1:{worker.settings.metrics_port}/readyz") as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None
