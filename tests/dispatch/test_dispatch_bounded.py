"""The dispatcher's per-destination state stays bounded: nothing grows for good (pure)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from processor.dispatch.bounded import make_room, prune
from processor.dispatch.breaker import Breakers
from processor.dispatch.outcomes import Output
from processor.dispatch.pool import DestinationPool
from processor.dispatch.ratelimit import RateLimiters
from processor.dispatch.worker import Dispatcher, DispatcherOptions
from processor.settings import Settings


def test_prune_drops_entries_at_rest_first_then_the_oldest() -> None:
    entries = {n: n % 2 == 0 for n in range(10)}  # even keys are "at rest"
    assert prune(entries, 10, bool) == 0
    assert prune(entries, 6, bool) == 5 and list(entries) == [1, 3, 5, 7, 9]
    busy = dict.fromkeys(range(8), False)
    assert prune(busy, 4, bool) == 5 and list(busy) == [5, 6, 7]  # down to 3/4 of 4, oldest first
    room = dict.fromkeys(range(4), False)
    make_room(room, 4, bool)
    assert len(room) < 4


def test_breakers_of_many_destinations_stay_bounded_and_open_ones_are_kept() -> None:
    breakers = Breakers(threshold=1, capacity=100)
    breakers.get("down:443").failure(0)  # open: not at rest
    for n in range(1_000):
        breakers.get(f"host{n}:443").success()
    assert len(breakers.by_key) <= 100
    assert breakers.by_key["down:443"].is_open  # forgetting it would send to it again at once


def test_rate_limiters_forget_idle_destinations() -> None:
    limiters = RateLimiters(capacity=50)
    busy = limiters.get("busy:443", 0.001, now=0.0)
    busy.reserve(0.0)  # its next slot is 1,000 s away: not idle during this test
    for n in range(1, 500):
        limiters.get(f"host{n}:443", 10.0, now=float(n)).reserve(float(n))  # idle again 0.1 s later
    assert len(limiters.by_key) <= 50
    assert limiters.by_key[("busy:443", 0.001)] is busy


async def test_destination_queues_go_once_drained() -> None:
    async def handle(_item: int) -> None:
        await asyncio.sleep(0)

    pool: DestinationPool[int] = DestinationPool(handle, lambda _key: 2)
    for n in range(300):
        pool.submit(f"host{n}:443", n)
    assert len(pool) == 300
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(pool) == 0 and pool.busy() == 0


def test_retries_produced_are_only_tracked_in_burst_mode(settings: Settings) -> None:
    """Outside burst mode another dispatcher may consume them: the set would only grow."""
    retry = Output(settings.topics.retry_tiers[0], b"k", b'{"delivery_id": "dlv_1", "attempt": 2}')
    steady = Dispatcher(settings, DispatcherOptions())
    steady.retry_produced([retry])
    assert not steady.outstanding_retries
    burst = Dispatcher(settings, DispatcherOptions(drain_idle_s=1.0))
    burst.retry_produced([retry])
    assert burst.outstanding_retries == {("dlv_1", 2)}


def test_outcomes_and_decisions_import_no_http_or_kafka_client() -> None:
    """The pure stages stay apart from aiohttp and aiokafka (issue 9 point 5)."""
    code = ("import sys, processor.dispatch.outcomes, processor.dispatch.decide, processor.dispatch.decode,"
            " processor.dispatch.request, processor.dispatch.attempt;"
            "print(sorted(m for m in ('aiohttp', 'aiokafka') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
