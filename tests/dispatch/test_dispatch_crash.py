"""kill -9 of the dispatcher process mid-stream loses no delivery."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from processor.devtools.broker import EmbeddedBroker
from processor.settings import Settings
from tests.dispatch_helpers import (
    ScriptedReceiver,
    by_delivery,
    check_results,
    due_record,
    produce,
    read_values,
    slow,
    status_then_ok,
)

pytestmark = pytest.mark.integration

RECORDS = 400


async def _start(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, **settings.as_env(), "FLOWHOOK_LOG_LEVEL": "warning"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor", "dispatcher", "--concurrency", "16", *args, env=env
    )


async def _until_quarter_sent(receiver: ScriptedReceiver, process: asyncio.subprocess.Process) -> None:
    """Wait until a quarter of the records reached the receiver (the dispatcher is mid-stream)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(receiver.hits) < RECORDS // 4:
        assert loop.time() < deadline and process.returncode is None, "the dispatcher did not get going"
        await asyncio.sleep(0.02)


async def test_kill_9_mid_stream_loses_nothing(settings: Settings) -> None:
    """After kill -9 and a restart, every due record ends delivered; repeats keep their webhook-id."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = ScriptedReceiver({"/slow": slow(0.02), "/flaky": status_then_ok(503)})
    await receiver.start()
    dues = [
        due_record(receiver.url("/flaky" if n % 10 == 0 else "/slow"), retry_ms=[300, 300])
        for n in range(RECORDS)
    ]
    await produce(settings, dues)
    try:
        first = await _start(settings)
        await _until_quarter_sent(receiver, first)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        hits_before_restart = len(receiver.hits)
        second = await _start(settings, "--drain", "1.5")
        assert await asyncio.wait_for(second.wait(), timeout=90) == 0
    finally:
        await receiver.stop()
    assert hits_before_restart < RECORDS  # it really died mid-stream
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    grouped = by_delivery(results)
    for due in dues:
        outcomes = [r["outcome"] for r in grouped[due["delivery_id"]]]
        assert outcomes[-1] == "delivered", (due["delivery_id"], outcomes)
        assert receiver.hits_for(due["delivery_id"])  # the same webhook-id, at least once


async def test_sigterm_finishes_in_flight_and_commits(settings: Settings) -> None:
    """SIGTERM mid-stream exits 0 after writing outcomes and committing: a restart sends nothing twice."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = await ScriptedReceiver({"/slow": slow(0.02)}).start()
    dues = [due_record(receiver.url("/slow")) for _ in range(RECORDS)]
    await produce(settings, dues)
    try:
        first = await _start(settings)
        await _until_quarter_sent(receiver, first)
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), timeout=30) == 0
        stopped_at = len(receiver.hits)
        second = await _start(settings, "--drain", "1.5")
        assert await asyncio.wait_for(second.wait(), timeout=90) == 0
    finally:
        await receiver.stop()
    assert stopped_at < RECORDS
    ids = [h.headers["webhook-id"] for h in receiver.hits]
    assert sorted(ids) == sorted(d["delivery_id"] for d in dues)  # each exactly once
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    assert len(results) == RECORDS and {r["outcome"] for r in results} == {"delivered"}


async def test_broker_pause_mid_stream_loses_nothing(settings: Settings, broker: EmbeddedBroker) -> None:
    """SIGSTOP of the broker for two seconds mid-stream: after SIGCONT every record ends delivered."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = await ScriptedReceiver({"/slow": slow(0.01)}).start()
    dues = [due_record(receiver.url("/slow")) for _ in range(RECORDS)]
    await produce(settings, dues)
    try:
        dispatcher = await _start(settings, "--drain", "2")
        await _until_quarter_sent(receiver, dispatcher)
        broker.pause()
        paused_at = len(receiver.hits)
        try:
            await asyncio.sleep(2)
        finally:
            broker.resume()
        assert await asyncio.wait_for(dispatcher.wait(), timeout=90) == 0
    finally:
        await receiver.stop()
    assert paused_at < RECORDS
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    final = {d: rs[-1]["outcome"] for d, rs in by_delivery(results).items()}
    assert all(final.get(d["delivery_id"]) == "delivered" for d in dues)
