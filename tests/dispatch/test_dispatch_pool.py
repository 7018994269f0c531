"""The dispatcher's per-destination queues and their bounded workers."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Hashable

from processor.dispatch.pool import DestinationPool


class Recorder:
    """A `handle` that records order and concurrency per key, and can be held back."""

    def __init__(self) -> None:
        self.order: dict[str, list[int]] = defaultdict(list)
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}
        self.done: list[tuple[str, int]] = []

    async def __call__(self, item: tuple[str, int]) -> None:
        key, n = item
        self.order[key].append(n)
        self.running[key] += 1
        self.peak[key] = max(self.peak[key], self.running[key])
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(0)
            self.done.append(item)
        finally:
            self.running[key] -= 1


def limit_of(limits: dict[Hashable, int]):
    return lambda key: limits[key]


async def _settle(pool: DestinationPool, rounds: int = 200) -> None:
    for _ in range(rounds):
        if not pool.busy() and not pool.queued():
            return
        await asyncio.sleep(0)


async def test_each_key_has_at_most_its_limit_of_workers_and_keeps_fifo() -> None:
    rec = Recorder()
    pool = DestinationPool(rec, limit_of({"a": 3, "b": 1}))
    for n in range(20):
        pool.submit("a", ("a", n))
        pool.submit("b", ("b", n))
    assert pool.workers("a") == 3 and pool.workers("b") == 1
    await _settle(pool)
    assert rec.peak["a"] == 3 and rec.peak["b"] == 1
    assert rec.order["a"] == list(range(20))  # started in submission order
    assert rec.order["b"] == list(range(20))
    assert len(rec.done) == 40


async def test_workers_end_when_their_queue_is_empty() -> None:
    rec = Recorder()
    pool = DestinationPool(rec, limit_of({"a": 4}))
    pool.submit("a", ("a", 1))
    assert pool.workers("a") == 1  # not more workers than items
    await _settle(pool)
    assert pool.workers("a") == 0 and pool.queued() == 0
    pool.submit("a", ("a", 2))  # a later item starts a fresh worker
    await _settle(pool)
    assert rec.done == [("a", 1), ("a", 2)]


async def test_a_stuck_destination_does_not_hold_up_another() -> None:
    rec = Recorder()
    rec.gates["slow"] = asyncio.Event()
    pool = DestinationPool(rec, limit_of({"slow": 2, "fast": 2}))
    for n in range(10):
        pool.submit("slow", ("slow", n))
    for n in range(10):
        pool.submit("fast", ("fast", n))
    for _ in range(100):
        await asyncio.sleep(0)
    assert [k for k, _ in rec.done].count("fast") == 10
    assert [k for k, _ in rec.done].count("slow") == 0
    rec.gates["slow"].set()
    await _settle(pool)
    assert [k for k, _ in rec.done].count("slow") == 10


async def test_abandon_drops_queued_and_cancels_busy_items_it_selects() -> None:
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()
    pool = DestinationPool(rec, limit_of({"a": 2}))
    for n in range(6):
        pool.submit("a", ("a", n))
    await asyncio.sleep(0)
    assert pool.busy() == 2  # items 0 and 1 are held at the gate
    dropped = await pool.abandon(lambda item: item[1] % 2 == 0)  # 0 (busy), 2 and 4 (queued)
    assert sorted(dropped) == [("a", 2), ("a", 4)]
    rec.gates["a"].set()
    await _settle(pool)
    # The cancelled worker was replaced, so every item not selected still finished.
    assert sorted(rec.done) == [("a", 1), ("a", 3), ("a", 5)]
    assert pool.workers("a") == 0


async def test_a_handle_that_raises_does_not_strand_the_queue() -> None:
    done: list[int] = []

    async def handle(item: int) -> None:
        await asyncio.sleep(0)
        if item == 2:
            raise RuntimeError("bug")
        done.append(item)

    pool: DestinationPool[int] = DestinationPool(handle, lambda _key: 1)
    for n in range(5):
        pool.submit(None, n)
    for _ in range(100):
        await asyncio.sleep(0)
    assert done == [0, 1, 3, 4]  # the items after the failed one were still handled
    assert pool.workers(None) == 0


def test_records_queue_by_destination_and_unsent_ones_share_none() -> None:
    from processor.dispatch.decode import destination_of
    from tests.dispatch_helpers import typed_due as due_record

    assert destination_of(due_record("https://hooks.example.com/a?x=1")) == "hooks.example.com:443"
    assert destination_of(due_record("http://hooks.example.com/b")) == "hooks.example.com:80"
    assert destination_of(due_record("https://hooks.example.com:8443/c")) == "hooks.example.com:8443"
    assert destination_of(due_record("https://hooks.example.com/a", mode="held")) is None
    assert destination_of(due_record("https://hooks.example.com/a", mode="invalid")) is None
    assert destination_of(due_record("http://[::1/x")) is None  # prepare() refuses it, with the reason
    assert destination_of(due_record("https://h.example.com:99999/x")) is None
    assert destination_of(None) is None
