"""The dispatcher worker through the real broker: breaker, isolation, rate limits, lanes, stop, replay."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from processor.clock import now_ms
from processor.devtools.broker import free_port
from processor.dispatch.replay import ReplayFilter, replay_dead
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.kafka import make_reader
from processor.settings import Settings
from tests.dispatch_helpers import (
    ScriptedReceiver,
    always,
    by_delivery,
    check_results,
    due_record,
    hang_then_ok,
    produce,
    read_values,
    slow,
)

pytestmark = pytest.mark.integration


async def _drain(settings: Settings, **options: Any) -> None:
    opts = DispatcherOptions(**{"drain_idle_s": 1.0, **options})
    await asyncio.wait_for(run_dispatcher(settings, options=opts), timeout=90)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _watch_results(settings: Settings, seen: list[dict[str, Any]]) -> None:
    """Append every result to `seen` as it arrives (until cancelled)."""
    reader = make_reader(settings, settings.topics.results)
    await reader.start()
    try:
        while True:
            batch = await reader.getmany(timeout_ms=100)
            seen.extend(orjson.loads(r.value) for recs in batch.values() for r in recs)
    finally:
        await reader.stop()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Shorter group timeouts: the embedded broker's joins take about half the session timeout."""
    return settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)


def _final(results: list[dict[str, Any]]) -> dict[str, str]:
    return {delivery: rs[-1]["outcome"] for delivery, rs in by_delivery(results).items()}


async def test_breaker_opens_and_a_probe_closes_it(settings: Settings) -> None:
    """A down destination opens its circuit (tries deferred, no request); once up, a probe closes it."""
    port = free_port()
    receiver = ScriptedReceiver()
    dues = [due_record(f"http://127.0.0.1:{port}/hook", retry_ms=[300] * 20) for _ in range(6)]
    await produce(settings, dues)
    seen: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_watch_results(settings, seen))
    dispatcher = asyncio.create_task(
        _drain(settings, per_destination=1, breaker_threshold=3, breaker_cooldown_ms=1_000)
    )
    try:
        await _wait_for(lambda: any(r.get("deferred") for r in seen))
        await receiver.start(port)  # the destination comes back
        await dispatcher
    finally:
        watcher.cancel()
        await receiver.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    assert set(_final(results).values()) == {"delivered"}
    refused = [r for r in results if r["error"] and r["error"].startswith("connect_error")]
    skipped = [r for r in results if r.get("deferred")]
    assert len(refused) >= 3 and skipped
    assert all(r["sent_at"] is None and r["outcome"] == "retry_scheduled" for r in skipped)
    assert all(r["error"].startswith("deferred: circuit open for 127.0.0.1:") for r in skipped)
    assert len(receiver.hits) == len(dues)  # nothing was sent twice once it was up


async def test_one_destination_hanging_does_not_slow_another(settings: Settings) -> None:
    """Deliveries to a healthy destination all finish before the first request to a hanging one times out."""
    hanging, healthy = ScriptedReceiver({"/h": hang_then_ok(times=99)}), ScriptedReceiver()
    await hanging.start()
    await healthy.start()
    slow = [due_record(hanging.url("/h"), timeout_ms=2_000, retry_ms=[]) for _ in range(16)]
    fast = [due_record(healthy.url("/ok")) for _ in range(200)]
    mixed = [d for pair in zip(slow, fast[:16], strict=True) for d in pair] + fast[16:]
    await produce(settings, mixed)
    try:
        await _drain(settings, concurrency=8, per_destination=4, breaker_threshold=4, breaker_cooldown_ms=500)
    finally:
        await hanging.stop()
        await healthy.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    final = _final(results)
    assert all(final[d["delivery_id"]] == "delivered" for d in fast)
    assert all(final[d["delivery_id"]] == "dead" for d in slow)
    slow_ids = {d["delivery_id"] for d in slow}
    first_timeout = min(r["finished_at"] for r in results if r["delivery_id"] in slow_ids)
    last_fast = max(r["finished_at"] for r in results if r["delivery_id"] not in slow_ids)
    assert last_fast < first_timeout
    # The breaker opened after 4 timeouts; the rest were deferred (not attempts), then each
    # got its one real try as a probe: a deferral spends no try (SPEC §3).
    assert any(r.get("deferred") for r in results)
    assert sorted(h.headers["webhook-id"] for h in hanging.hits) == sorted(slow_ids)


async def test_rate_limit_spaces_requests_to_a_destination(settings: Settings) -> None:
    """With rate_limit 5/s, eight requests to one destination are spaced out, not sent at once."""
    receiver = await ScriptedReceiver().start()
    await produce(settings, [due_record(receiver.url("/r"), rate_limit=5.0) for _ in range(8)])
    try:
        await _drain(settings)
    finally:
        await receiver.stop()
    times = sorted(h.at for h in receiver.hits)
    # Slots are 0.2 s apart; the first request also opens the connection, so on a loaded
    # machine it can arrive late and shorten the span by a few tens of ms. Unlimited, all
    # eight arrive within a few ms; six intervals' worth proves the spacing.
    assert len(times) == 8 and times[-1] - times[0] >= 6 * 0.2


async def test_first_tries_pass_waiting_retries_and_stop_commits(settings: Settings) -> None:
    """First tries pass waiting retries; a stop commits, so a restart resends nothing already done."""
    receiver = await ScriptedReceiver().start()
    waiting_until = now_ms() + 5_000
    retries = [due_record(receiver.url("/retry"), attempt=2, not_before_ms=waiting_until) for _ in range(10)]
    firsts = [due_record(receiver.url("/first")) for _ in range(50)]
    await produce(settings, retries, topic=settings.topics.retry_tier(5_000))
    await produce(settings, firsts)
    stop = asyncio.Event()
    try:
        run = asyncio.create_task(run_dispatcher(settings, concurrency=16, stop=stop))
        await _wait_for(lambda: len(receiver.hits) >= len(firsts))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(run, timeout=30)
        assert {h.path for h in receiver.hits} == {"/first"}  # the retries are still waiting
        await _drain(settings)  # a restart: the retries go out at their time, the first tries not again
    finally:
        await receiver.stop()
    retry_hits = [h for h in receiver.hits if h.path == "/retry"]
    assert len(retry_hits) == len(retries) and now_ms() >= waiting_until
    assert sorted(h.headers["webhook-id"] for h in receiver.hits if h.path == "/first") == sorted(
        d["delivery_id"] for d in firsts
    )
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    assert set(_final(results).values()) == {"delivered"} and len(_final(results)) == 60


async def test_replay_sends_dead_deliveries_again_with_their_webhook_id(settings: Settings) -> None:
    """`flowhook replay --flow` re-queues only that flow's dead deliveries; they keep their webhook-id."""
    receiver = await ScriptedReceiver({"/d": always(503)}).start()
    ours = [due_record(receiver.url("/d"), retry_ms=[]) for _ in range(3)]
    other = due_record(receiver.url("/d"), retry_ms=[], flow_id="other-flow")
    await produce(settings, [*ours, other])
    try:
        await _drain(settings)
        receiver.behaviours = {}  # the receiver is fixed
        env = {**os.environ, **settings.as_env()}
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", "replay", "--flow", "test-flow", "--idle", "1", env=env
        )
        assert await asyncio.wait_for(cli.wait(), 60) == 0
        await _drain(settings)
        again = await replay_dead(settings, ReplayFilter(flow_id="test-flow"), idle_s=1.0)
    finally:
        await receiver.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    final = _final(results)
    assert all(final[d["delivery_id"]] == "delivered" for d in ours)
    assert final[other["delivery_id"]] == "dead"
    for due in ours:
        assert len(receiver.hits_for(due["delivery_id"])) == 2
    assert again["replayed"] == 0  # delivered since: not sent again


async def test_a_second_dispatcher_joining_mid_stream_loses_nothing(settings: Settings) -> None:
    """A second dispatcher joining mid-stream moves partitions (finish, commit) and loses nothing."""
    receiver = await ScriptedReceiver({"/s": slow(0.01)}).start()
    dues = [due_record(receiver.url("/s")) for _ in range(600)]
    await produce(settings, dues)
    try:
        first = asyncio.create_task(_drain(settings, concurrency=8, drain_idle_s=2.0))
        await _wait_for(lambda: len(receiver.hits) >= 100)
        assert len(receiver.hits) < len(dues)
        await _drain(settings, concurrency=8, drain_idle_s=2.0)
        await first
    finally:
        await receiver.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    final = _final(results)
    assert all(final[d["delivery_id"]] == "delivered" for d in dues)
    assert {h.headers["webhook-id"] for h in receiver.hits} == {d["delivery_id"] for d in dues}


async def test_cancelling_the_task_shuts_down_gracefully(settings: Settings) -> None:
    """Cancelling run_dispatcher (in-process use) finishes in-flight work and commits like a stop."""
    receiver = await ScriptedReceiver({"/s": slow(0.05)}).start()
    dues = [due_record(receiver.url("/s")) for _ in range(80)]
    await produce(settings, dues)
    try:
        task = asyncio.create_task(run_dispatcher(settings, concurrency=4))
        await _wait_for(lambda: len(receiver.hits) >= 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        assert len(receiver.hits) < len(dues)
        await _drain(settings)
    finally:
        await receiver.stop()
    ids = sorted(h.headers["webhook-id"] for h in receiver.hits)
    assert ids == sorted(d["delivery_id"] for d in dues)  # each exactly once


async def test_a_record_that_crashes_its_handler_is_not_a_poison_pill(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while handling one record gives it an `invalid` outcome; the rest go on."""
    from processor.dispatch import outcomes

    receiver = await ScriptedReceiver().start()
    dues = [due_record(receiver.url("/ok")) for _ in range(5)]
    doomed = dues[2]["delivery_id"]
    real_expired = outcomes.expired

    def exploding(topics: Any, due: Any, now: int) -> Any:
        if due.delivery_id == doomed:
            raise RuntimeError("a bug")
        return real_expired(topics, due, now)

    monkeypatch.setattr(outcomes, "expired", exploding)
    await produce(settings, dues)
    try:
        await _drain(settings)
    finally:
        await receiver.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    final = _final(results)
    assert final.pop(doomed) == "invalid"
    assert set(final.values()) == {"delivered"} and len(final) == 4


async def test_per_destination_limit_caps_concurrent_requests(settings: Settings) -> None:
    """With per_destination 3, one receiver never has more than three requests open at once."""
    from aiohttp import web

    open_now, peak = 0, 0

    async def counting(request: web.Request, seen: int) -> web.StreamResponse:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            await asyncio.sleep(0.03)
            return web.json_response({"ok": True})
        finally:
            open_now -= 1

    receiver = await ScriptedReceiver({"/c": counting}).start()
    await produce(settings, [due_record(receiver.url("/c")) for _ in range(60)])
    try:
        await _drain(settings, concurrency=32, per_destination=3)
    finally:
        await receiver.stop()
    assert len(receiver.hits) == 60 and peak == 3
