"""Outages ridden out: the whole broker gone for a while, unreachable brokers, Ctrl-C at once.

The embedded broker keeps everything in memory, so it is made "gone" without losing its data
by SIGSTOP (and brought back by SIGCONT). The outage lasts OUTAGE_S seconds (15 by default;
`FLOWHOOK_TEST_OUTAGE_S=60` for the full minute the issue asks for, run by hand).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess
from processor.settings import Settings
from tests.dispatch_helpers import ScriptedReceiver, read_values, slow
from tests.engine_helpers import definition, event, event_bytes, processor_worker, produce, publish_flows

OUTAGE_S = float(os.environ.get("FLOWHOOK_TEST_OUTAGE_S", "15"))
EVENTS = 1_200


def _flowhook(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "processor", *args], env={**os.environ, **env},
                          capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("args", [
    ("send", "EVENTS"), ("results",), ("replay",), ("replay", "--outcome", "failed"), ("flows", "list"),
    ("flows", "apply", "--allow-http", "FLOWS"),
])
def test_every_command_says_the_brokers_are_unreachable_in_one_line(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    """With no broker listening, a command prints one line naming the brokers and exits 1."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "e1", "metric": "M", "time": "2026-11-27T10:00:00Z", "profile": {"id": "p"}}\n')
    examples = Path(__file__).resolve().parents[1] / "examples" / "flows"
    argv = [str(events) if a == "EVENTS" else str(examples) if a == "FLOWS" else a for a in args]
    brokers = f"127.0.0.1:{free_port()}"
    done = _flowhook(*argv, env={"FLOWHOOK_BROKERS": brokers})
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr.decode()
    assert len(lines) == 1 and brokers in lines[0], lines
    assert b"Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("role", ["processor", "dispatcher"])
def test_ctrl_c_is_honoured_while_the_broker_is_unreachable(role: str, tmp_path: Path) -> None:
    """A worker waiting for an unreachable broker stops on Ctrl-C at once, with exit 0."""
    env = {**os.environ, "FLOWHOOK_BROKERS": f"127.0.0.1:{free_port()}", "FLOWHOOK_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "processor", role], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        while b"waiting_for_broker" not in process.stderr.readline():  # started, and waiting
            assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0, process.stderr.read() if process.stderr else ""
    finally:
        process.kill()
        process.wait()


async def _final_outcomes(settings: Settings, expected: int, timeout_s: float) -> dict[str, str]:
    """The last outcome of every delivery, read again until `expected` have one (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = await read_values(settings, settings.topics.results, idle_s=0.5)
        final = {r["delivery_id"]: r["outcome"] for r in results if r["type"] == "delivery"}
        if len(final) >= expected or time.monotonic() > deadline:
            return final
        await asyncio.sleep(0.5)


def _events(first: int, last: int) -> list[tuple[bytes, bytes]]:
    return [event_bytes(event(f"e{n}", pid=f"p{n}", OrderId=str(n))) for n in range(first, last)]


def _workers(settings: Settings, tmp_path: Path) -> list[WorkerProcess]:
    return [processor_worker(settings, tmp_path, "proc").start(),
            WorkerProcess("dispatcher", settings, tmp_path / "disp" / "worker.log").start()]


async def _wait(predicate: Any, timeout_s: float, workers: list[WorkerProcess]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "\n---\n".join(w.tail(20) for w in workers)
        assert all(w.alive for w in workers), "\n---\n".join(w.tail(20) for w in workers)
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.integration
async def test_the_broker_gone_mid_stream_loses_nothing(
    settings: Settings, broker: Any, tmp_path: Path
) -> None:
    """SIGSTOP of the broker mid-stream for OUTAGE_S: both workers keep running, log the outage
    once each, catch up after SIGCONT, and every delivery ends delivered."""
    settings = settings.with_(session_timeout_ms=3_000, heartbeat_interval_ms=300, rebalance_timeout_ms=3_000)
    receiver = await ScriptedReceiver({"/hook": slow(0.002)}).start()
    hook = {"id": "hook", "url": receiver.url("/hook"), "body": {"order": "{{ event.OrderId }}"}}
    await publish_flows(settings, definition("order", steps=[{"webhook": hook}]))
    workers = _workers(settings, tmp_path)
    try:
        await produce(settings, settings.topics.events, _events(0, EVENTS // 2))
        await _wait(lambda: len(receiver.hits) >= EVENTS // 8, 60, workers)
        broker.pause()
        try:
            await asyncio.sleep(OUTAGE_S)
            assert all(w.alive for w in workers), "\n---\n".join(w.tail(20) for w in workers)
        finally:
            broker.resume()
        await produce(settings, settings.topics.events, _events(EVENTS // 2, EVENTS))
        ids = lambda: {h.headers["webhook-id"] for h in receiver.hits}  # noqa: E731
        await _wait(lambda: len(ids()) >= EVENTS, 120, workers)
        final = await _final_outcomes(settings, EVENTS, 60)  # every one ends in an outcome record
    finally:
        for worker in workers:
            worker.stop()
        await receiver.stop()
    assert len(final) == EVENTS and set(final.values()) == {"delivered"}
    for worker in workers:
        outages = worker.log_path.read_text().count("broker_unreachable")
        assert outages == 1, worker.tail(40)
