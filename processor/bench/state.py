"""`flowhook bench --stages state`: the processor with a large state (RocksDB store).

Measures, in one run and on one worker's RocksDB state:
1. baseline: N bench events on an empty state (events/s);
2. fill: M events from M distinct profiles into a flow whose runs wait on a 30-day delay,
   so the state holds M profiles and M pending delays; events/s and the worker's RSS;
3. restart-to-ready: the worker is stopped (SIGTERM) and started again on the same data
   folder; the time until a new event's webhook-due record appears (group join included),
   split by the worker's /readyz into process start, join + recovery, and the first record,
   and when its due index (rebuilt in the background) is complete;
4. N bench events with the M pending delays in place, against the baseline of step 1, once
   the due index is complete.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from processor.bench.scale import readyz
from processor.bench.stages import Bench, StageResult, _peak_rss_mb, count_records, stage_from_stamps
from processor.clock import iso, now_ms
from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess, apply_definitions
from processor.kafka import make_producer
from processor.settings import Settings

SIGNUP_METRIC = "Bench Signup"
MIN_RATE_FOR_DEADLINE = 300  # events/s below which a stage is given up as stuck


def waiting_flow(receiver_url: str) -> dict[str, Any]:
    """Every signup starts a run that waits 30 days: one pending delay per profile."""
    return {
        "id": "bench-waiting",
        "name": "bench: signup, then wait",
        "status": "live",
        "trigger": {"metric": SIGNUP_METRIC},
        "steps": [{"delay": "30d"},
                  {"webhook": {"id": "later", "url": f"{receiver_url}/later", "body": {"x": 1}}}],
    }


def signup(index: int) -> bytes:
    return orjson.dumps({
        "id": f"evt_signup_{index}", "metric": SIGNUP_METRIC, "time": iso(now_ms()),
        "profile": {"id": f"p_{index}", "email": f"bench{index}@example.invalid", "first_name": "Bench",
                    "properties": {"address": f"{index} Main St", "plan": "basic"}},
        "properties": {"source": "bench"},
    })


async def produce_signups(settings: Settings, profiles: int) -> None:
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        pending = []
        for index in range(profiles):
            key = f"p_{index}".encode()
            pending.append(await producer.send(settings.topics.events, signup(index), key=key))
            if len(pending) >= 20_000:  # bound the futures held at once
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def run_state_stage(bench: Bench, profiles: int) -> list[StageResult]:
    settings = bench.settings().with_(store="rocksdb")
    await bench.prepare_flows(settings)
    await apply_definitions(settings, [(waiting_flow(bench.receiver_url), "bench")])
    worker = bench.worker("processor", settings).start()
    n = bench.config.events
    try:
        baseline = await _bench_events(bench, settings, worker, "baseline", n,
                                       "processor, RocksDB, empty state")
        fill = await _fill(bench, settings, worker, profiles)
    finally:
        worker.stop()
    already = await _count_webhooks(settings)
    # With an endpoint of its own: its /readyz tells when it is up and when it is ready.
    restarted = bench.worker("processor", settings.with_(metrics_port=free_port())).start()
    try:
        ready = await _restart_to_ready(bench, settings, restarted, profiles, already)
        loaded = await _bench_events(bench, settings, restarted, "loaded", n,
                                     f"processor, RocksDB, {profiles:,} pending delays")
        if baseline.rate and loaded.rate:
            loaded.note = f"{loaded.rate / baseline.rate:.2f}× the empty-state rate"
    finally:
        restarted.stop()
    return [baseline, fill, ready, loaded]


async def _bench_events(bench: Bench, settings: Settings, worker: WorkerProcess, run: str, expect: int,
                        name: str) -> StageResult:
    already = await _count_webhooks(settings)
    since_ms = now_ms()
    await bench.produce_events(settings, run)
    window = bench.cpu_window({"processor": [worker]})
    stamps = await count_records(settings, settings.topics.webhooks, already + expect, _deadline(expect),
                                 alive=lambda: worker.alive, window=window)
    # Records come in partition order, not time order: keep those written after this step began.
    return stage_from_stamps(name, stamps, expect, window, since_ms=since_ms)


async def _count_webhooks(settings: Settings) -> int:
    return len(await count_records(settings, settings.topics.webhooks, 10**9, time.monotonic() + 2))


async def _fill(bench: Bench, settings: Settings, worker: WorkerProcess, profiles: int) -> StageResult:
    await produce_signups(settings, profiles)
    window = bench.cpu_window({"processor": [worker]})
    stamps = await count_records(settings, settings.topics.results, profiles, _deadline(profiles),
                                 accept=lambda v: b'"entered"' in v and b"bench-waiting" in v,
                                 alive=lambda: worker.alive, window=window)
    result = stage_from_stamps(f"fill: {profiles:,} profiles, each waiting on a delay", stamps, profiles,
                               window)
    result.rss_mb = {"processor": _peak_rss_mb(worker)}
    return result


async def _restart_to_ready(
    bench: Bench, settings: Settings, worker: WorkerProcess, profiles: int, already: int
) -> StageResult:
    """Seconds from the worker's start until a new event's webhook-due record is on Kafka,
    with the phases its /readyz shows: process up (imports, app built, endpoint serving),
    ready (group joined, state recovered), then the probe's record; and when the due index,
    rebuilt in the background from every stored profile, was complete (the next step
    measures the rate after that, so the rebuild is not in it)."""
    started = worker.started_at
    watch = asyncio.create_task(_readyz_phases(worker))
    await bench.send_untimed(settings, "probe")
    stamps = await count_records(settings, settings.topics.webhooks, already + 1, time.monotonic() + 300,
                                 alive=lambda: worker.alive)
    seconds = time.monotonic() - started
    up_s, ready_s, indexed_s = await watch
    ok = len(stamps) > already
    result = StageResult(f"restart to ready with {profiles:,} profiles", 1 if ok else 0,
                         seconds if ok else None, rss_mb={"processor": _peak_rss_mb(worker)})
    result.phases_s = {"up": up_s, "ready": ready_s, "due_index": indexed_s}
    phases = restart_phases(up_s, ready_s, seconds, indexed_s)
    result.note = f"seconds until a new event's webhook-due record; {phases}" if ok else "not ready"
    return result


def restart_phases(up_s: float | None, ready_s: float | None, total_s: float,
                   indexed_s: float | None = None) -> str:
    """'process up 4.1 s, joined + recovered +9.0 s, first record +0.4 s, due index
    complete at 12.0 s' (from the start)."""
    if up_s is None or ready_s is None:
        return "phases not seen (the endpoint did not answer)"
    indexed = "" if indexed_s is None else f", due index complete at {indexed_s:.1f} s"
    return (f"process up {up_s:.1f} s, joined + recovered +{ready_s - up_s:.1f} s, "
            f"first record +{max(0.0, total_s - ready_s):.1f} s{indexed}")


async def _readyz_phases(worker: WorkerProcess) -> tuple[float | None, float | None, float | None]:
    """Seconds from the worker's start until its /readyz answers, until it says ready, and
    until it says its due index is complete."""
    up = ready = indexed = None
    deadline = time.monotonic() + 300
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while indexed is None and time.monotonic() < deadline and worker.alive:
            body = await readyz(session, worker)
            now = time.monotonic() - worker.started_at
            if body is not None and up is None:
                up = now
            if body is not None and body.get("ready") and ready is None:
                ready = now
            if ready is not None and body is not None and body.get("due_index") == "complete":
                indexed = now
            await asyncio.sleep(0.1)
    return up, ready, indexed


def _deadline(records: int) -> float:
    return time.monotonic() + 60 + records / MIN_RATE_FOR_DEADLINE
