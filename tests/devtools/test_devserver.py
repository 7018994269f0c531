"""`flowhook broker` and `flowhook dev` as long-running commands: they start, serve and stop cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from processor.devtools.broker import _port_open, free_port
from processor.devtools.stack import wait_until
from processor.kafka import read_records
from processor.settings import Settings

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "flows"
EXAMPLE_RECEIVER_PORT = 8787  # the example flows post to http://127.0.0.1:8787


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The command with its output in tmp_path/output.log: a pipe nobody reads would fill up
    and block the command (dev prints a line per delivery)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOK_")}
    with (tmp_path / "output.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "processor", *args], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def output(tmp_path: Path) -> str:
    return (tmp_path / "output.log").read_text(errors="replace")[-3000:]


def _wait_for_event(process: subprocess.Popen[bytes], log: Path, event: str, timeout_s: float) -> bool:
    """Poll the command's output log until a line carries `event` (False if it exits or times out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and event.encode() in log.read_bytes():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def interrupt(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=30)


def test_broker_command_listens_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`flowhook broker --port P` serves Kafka on 127.0.0.1:P until Ctrl-C, then frees the port."""
    port = free_port()
    process = start(tmp_path, "broker", "--port", str(port))
    try:
        assert wait_until(lambda: _port_open(port), 20), output(tmp_path)
    finally:
        code = interrupt(process)
    assert code == 0
    assert wait_until(lambda: not _port_open(port), 10)


@pytest.mark.parametrize("extra", [[], pytest.param(["--kafka"], marks=pytest.mark.kafka)],
                         ids=["embedded", "kafka"])
async def test_dev_applies_flows_and_delivers_to_its_receiver(tmp_path: Path, extra: list[str]) -> None:
    """`flowhook dev --flows examples/flows [--kafka]` runs the whole path until Ctrl-C, then stops
    every part (with --kafka on one Apache Kafka node)."""
    port, receiver_port = free_port(), EXAMPLE_RECEIVER_PORT
    if _port_open(receiver_port):
        pytest.skip(f"port {receiver_port}, where the example flows post, is taken on this machine")
    process = start(tmp_path, "dev", "--port", str(port), "--flows", str(EXAMPLES),
                    "--receiver-port", str(receiver_port), *extra)
    try:
        settings = Settings(brokers=f"127.0.0.1:{port}")
        # Its own `dev_ready` event, not "port 8787 answers": another run on the machine may hold it.
        assert await asyncio.to_thread(_wait_for_event, process, tmp_path / "output.log", "dev_ready", 120)
        send = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "processor", "send", str(EXAMPLES.parent / "events.jsonl")],
            env={**os.environ, **settings.as_env()}, capture_output=True, timeout=120,
        )
        assert send.returncode == 0, send.stderr.decode()
        delivered: list[str] = []
        async for record in read_records(settings, settings.topics.results, follow=True,
                                         stop=lambda: len(delivered) >= 20):
            value = orjson.loads(record.value)
            if value.get("outcome") == "delivered":
                delivered.append(value["delivery_id"])
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{receiver_port}/__stats"
        ) as response:
            assert (await response.json())["total"] >= 20
    finally:
        code = await asyncio.to_thread(interrupt, process)
    assert code == 0
    assert not _port_open(port) and not _port_open(receiver_port)
