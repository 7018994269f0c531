"""`flowhook dev` is ready when its workers are, shows deliveries and worker trouble, restarts
a worker that dies, and exits 0 on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from processor.devtools.broker import free_port
from processor.settings import Settings

pytestmark = pytest.mark.slow


class Output:
    """The dev process's output, read in the background and searched by pattern."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.text = ""
        self._task = asyncio.create_task(self._read(process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.text += line.decode(errors="replace")

    async def wait_for(self, pattern: str, timeout_s: float = 90, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.compile(pattern).search(self.text, after)
            if found:
                return found
            await asyncio.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in dev's output:\n{self.text[-4000:]}")


async def _ready(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as response:
        return response.status


async def test_dev_is_ready_with_its_workers_shows_deliveries_and_restarts_a_dead_worker(
    tmp_path: Path,
) -> None:
    """dev_ready comes only when both workers answer /readyz 200; a delivery shows as a line;
    a SIGKILLed dispatcher is reported and started again; Ctrl-C stops everything with 0."""
    port, receiver = free_port(), free_port()
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "f.yaml").write_text(
        "id: dev-flow\nstatus: live\ntrigger: {metric: Placed Order}\nreentry: always\nsteps:\n"
        f"  - webhook: {{id: hook, url: 'http://127.0.0.1:{receiver}/hook', body: {{a: b}}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOK_")}
    env.update(COLUMNS="300", FLOWHOOK_DATA_DIR=str(tmp_path / "data"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor", "dev", "--port", str(port), "--flows", str(flows),
        "--receiver-port", str(receiver), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out = Output(process)
    try:
        await out.wait_for("dev_ready")
        started = {m[3]: (int(m[2]), m[1]) for m in re.finditer(
            r"worker_started\s+metrics=(http://127\.0\.0\.1:\d+)/metrics pid=(\d+) role=(\w+)", out.text)}
        assert sorted(started) == ["dispatcher", "processor"]
        assert [await _ready(url) for _, url in started.values()] == [200, 200]  # ready when dev said so

        settings = Settings(brokers=f"127.0.0.1:{port}")
        event = {"id": "e1", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
                 "profile": {"id": "p1"}}
        (tmp_path / "e.jsonl").write_bytes(orjson.dumps(event) + b"\n")
        sent = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "processor", "send",
                                       str(tmp_path / "e.jsonl")], env={**env, **settings.as_env()},
                                       capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        await out.wait_for(r"delivery\s+.*flow=dev-flow .*outcome=delivered")

        mark = len(out.text)
        os.kill(started["dispatcher"][0], signal.SIGKILL)
        await out.wait_for(r"worker_died\s+.*role=dispatcher", after=mark)
        await out.wait_for(r"worker_restarting\s+.*role=dispatcher", after=mark)
        await out.wait_for(r"worker_started\s+.*role=dispatcher", after=mark)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0, out.text[-3000:]
