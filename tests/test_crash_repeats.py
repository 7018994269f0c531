"""Few repeats (SPEC §4): kill -9 of workers mid-stream loses nothing and sends few deliveries twice.

Real worker processes (two processors, two dispatchers), a real loopback receiver counting
webhook-ids; events are produced at a steady rate so the kills land mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from processor.devtools.stack import WorkerProcess
from processor.settings import Settings
from tests.dispatch_helpers import ScriptedReceiver, read_values, slow
from tests.engine_helpers import definition, event, event_bytes, processor_worker, produce, publish_flows

pytestmark = pytest.mark.slow

RATE = 250  # events per second


def _dispatcher(settings: Settings, folder: Path, name: str) -> WorkerProcess:
    return WorkerProcess("dispatcher", settings, folder / name / "worker.log", args=("--concurrency", "64"))


async def _send_steadily(settings: Settings, first: int, count: int) -> None:
    for start in range(first, first + count, RATE // 10):
        batch = [event(f"e{n}", pid=f"p{n}", OrderId=str(n)) for n in range(start, min(start + RATE // 10,
                                                                                      first + count))]
        await produce(settings, settings.topics.events, [event_bytes(e) for e in batch])
        await asyncio.sleep(0.1)


async def _until(predicate: object, timeout_s: float, workers: list[WorkerProcess], *,
                 required: bool = True) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() >= deadline:
            assert not required, "\n---\n".join(w.tail(15) for w in workers)
            return  # the caller counts what is missing
        await asyncio.sleep(0.1)


async def _run(settings: Settings, tmp_path: Path, total: int, *, kill_dispatcher: bool) -> Counter[str]:
    """Run the stack, kill -9 one processor (and one dispatcher) at a third of the stream,
    restart them; returns how often each webhook-id reached the receiver."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = await ScriptedReceiver({"/hook": slow(0.005)}).start()
    hook = {"id": "hook", "url": receiver.url("/hook"), "body": {"order": "{{ event.OrderId }}"}}
    await publish_flows(settings, definition("order", steps=[{"webhook": hook}]))
    workers = [processor_worker(settings, tmp_path, f"proc{i}").start() for i in range(2)]
    workers += [_dispatcher(settings, tmp_path, f"disp{i}").start() for i in range(2)]
    try:
        # Both pairs must be in their groups before the stream starts, or the kill would
        # only hit a process that had not started work yet.
        await produce(settings, settings.topics.events, [event_bytes(event("warm", pid="warm"))])
        await _until(lambda: receiver.hits, 60, workers)
        sender = asyncio.create_task(_send_steadily(settings, 0, total))
        await _until(lambda: len(receiver.hits) >= total // 3, 60, workers)
        victims = [workers[0], *([workers[2]] if kill_dispatcher else [])]
        for victim in victims:
            victim.kill()
        await asyncio.sleep(1.0)
        for victim in victims:
            victim.start()
        await sender
        ids = lambda: {h.headers["webhook-id"] for h in receiver.hits}  # noqa: E731
        await _until(lambda: len(ids()) >= total + 1, 120, workers, required=False)
        await asyncio.sleep(3.0)  # repeats, if any, come in now
    finally:
        for worker in workers:
            worker.stop()
        await receiver.stop()
    return Counter(h.headers["webhook-id"] for h in receiver.hits)


@pytest.mark.integration
async def test_kill_9_of_a_processor_and_a_dispatcher_repeats_at_most_one_percent(
    settings: Settings, tmp_path: Path
) -> None:
    """3,000 deliveries, kill -9 of one of two processors and one of two dispatchers: none lost,
    at most 1% sent twice (counted at the receiver by webhook-id), every one ends delivered."""
    total = 3_000
    counts = await _run(settings, tmp_path, total, kill_dispatcher=True)
    repeated = sum(1 for n in counts.values() if n > 1)
    lost = total + 1 - len(counts)
    print(f"crash test: {len(counts)} webhook-ids, {lost} lost, {repeated} sent more than once")
    assert lost == 0, f"{lost} of {total + 1} deliveries lost"
    assert repeated <= total // 100, repeated
    results = await read_values(settings, settings.topics.results)
    final = {r["delivery_id"]: r["outcome"] for r in results if r["type"] == "delivery"}
    assert len(final) == total + 1 and set(final.values()) == {"delivered"}


async def test_a_processor_restart_alone_sends_nothing_twice(settings: Settings, tmp_path: Path) -> None:
    """kill -9 of one of two processors mid-stream and its restart: every delivery is sent exactly once."""
    total = 1_500
    counts = await _run(settings, tmp_path, total, kill_dispatcher=False)
    assert len(counts) == total + 1
    assert [i for i, n in counts.items() if n > 1] == []
