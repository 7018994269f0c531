"""Worker endpoints: /metrics, /healthz, /readyz, and the processor's profile lookup."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess
from processor.engine.profiles import partition_of
from processor.errors import ConfigError
from processor.ops.endpoint import Endpoint, Readiness
from processor.ops.metrics import WorkerMetrics
from processor.settings import Settings
from tests.engine_helpers import definition, event, event_bytes, produce, publish_flows, webhook

TOKEN = "test-endpoint-token-7f3a"


async def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.read()
        try:
            return response.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return response.status, body.decode()


async def test_endpoint_serves_metrics_health_and_readiness() -> None:
    """/metrics is Prometheus text with the SPEC names; /readyz follows the worker's readiness."""
    metrics = WorkerMetrics("dispatcher")
    state = {"ready": Readiness(False, "starting")}
    endpoint = Endpoint(metrics, lambda: state["ready"])
    port = await endpoint.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        metrics.deliveries.add(("f1", "hook", "delivered"), 3)
        metrics.delivery_seconds.observe(0.02)
        status, text = await _get(f"{base}/metrics")
        assert status == 200
        assert 'flowhook_deliveries_total{flow="f1",outcome="delivered",step="hook"} 3.0' in text
        assert "flowhook_delivery_seconds_bucket" in text
        assert "flowhook_ready 0.0" in text
        assert (await _get(f"{base}/healthz"))[0] == 200
        status, body = await _get(f"{base}/readyz")
        assert (status, body["reason"]) == (503, "starting")
        state["ready"] = Readiness(True)
        status, body = await _get(f"{base}/readyz")
        assert status == 200 and body["ready"] is True
        assert (await _get(f"{base}/profiles/p1", TOKEN))[0] == 404  # no token configured: no route
    finally:
        await endpoint.stop()


async def test_a_taken_port_is_one_line_naming_it() -> None:
    """A metrics port another process holds is a ConfigError naming host and port, not a traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            await Endpoint(WorkerMetrics("processor"), lambda: Readiness(True)).start("127.0.0.1", port)
    assert str(caught.value) == f"FLOWHOOK_METRICS_PORT: 127.0.0.1:{port} is already in use"


async def test_profile_route_needs_the_bearer_token() -> None:
    """A missing or wrong bearer token is 401; the right one reaches the lookup."""

    async def lookup(profile_id: str) -> tuple[int, dict[str, Any]]:
        return 200, {"profile_id": profile_id}

    endpoint = Endpoint(WorkerMetrics("processor"), lambda: Readiness(True), profiles=lookup, token=TOKEN)
    port = await endpoint.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/profiles/p_9"
    try:
        assert await _get(url) == (401, {"error": "unauthorized"})
        assert await _get(url, "wrong") == (401, {"error": "unauthorized"})
        assert await _get(url, TOKEN) == (200, {"profile_id": "p_9"})
    finally:
        await endpoint.stop()


async def _wait_ready(urls: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = []
        for url in urls:
            try:
                statuses.append((await _get(f"{url}/readyz"))[0])
            except aiohttp.ClientError:
                statuses.append(0)
        if all(s == 200 for s in statuses):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"not ready in {timeout_s} s: {statuses}")


@pytest.mark.slow
async def test_two_processors_each_answer_for_the_profiles_they_own(
    settings: Settings, tmp_path: Path
) -> None:
    """With two processors, each profile is served (200, with its waiting run) by exactly the
    owner of its partition; the other says not_owned with the same partition."""
    await publish_flows(settings, definition("wait", steps=[{"delay": "1h"}, webhook("later")]))
    ports = [free_port(), free_port()]
    workers = [
        WorkerProcess("processor", settings, tmp_path / f"p{i}.log",
                      env={"FLOWHOOK_METRICS_PORT": str(port), "FLOWHOOK_ENDPOINT_TOKEN": TOKEN,
                           "FLOWHOOK_DATA_DIR": str(tmp_path / f"d{i}")}).start()
        for i, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    profiles = [f"p_{n}" for n in range(12)]
    try:
        await produce(settings, settings.topics.events,
                      [event_bytes(event(f"e_{pid}", pid=pid)) for pid in profiles])
        await _wait_ready(urls)
        owners: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(owners) < len(profiles) and time.monotonic() < deadline:
            await _wait_ready(urls)
            owners = await _owners(urls, profiles, settings.partitions)
            if len(owners) < len(profiles):
                await asyncio.sleep(0.5)
        assert sorted(owners) == sorted(profiles), [w.tail() for w in workers]
        assert len(set(owners.values())) == 2, "both workers own some of the 12 profiles"
        answers = sorted([(await _get(f"{url}/profiles/nobody", TOKEN)) for url in urls], key=str)
        partition = partition_of("nobody", settings.partitions)
        assert answers == [(404, {"error": "not_owned", "partition": partition}),
                           (404, {"error": "unknown_profile"})]
    finally:
        for worker in workers:
            worker.stop()


async def _owners(urls: list[str], profiles: list[str], partitions: int) -> dict[str, int]:
    """profile -> index of the worker that answered 200 (checking every answer on the way)."""
    owners: dict[str, int] = {}
    for pid in profiles:
        answers = [await _get(f"{url}/profiles/{pid}", TOKEN) for url in urls]
        found = [i for i, (status, _) in enumerate(answers) if status == 200]
        if len(found) != 1:
            continue  # a rebalance under way, or the event not handled yet
        owner, (_, body) = found[0], answers[found[0]]
        other_status, other = answers[1 - owner]
        partition = partition_of(pid, partitions)
        assert (other_status, other) == (404, {"error": "not_owned", "partition": partition})
        assert body["partition"] == partition
        assert body["profile"]["email"] == f"{pid}@example.com"
        [run] = body["runs"]
        assert (run["flow_id"], run["version"], run["step"]["kind"]) == ("wait", 1, "webhook")
        assert run["wake_at"] is not None
        owners[pid] = owner
    return owners


@pytest.mark.slow
async def test_a_refused_flow_shows_in_log_metric_readyz_and_flows_list(
    settings: Settings, tmp_path: Path
) -> None:
    """A processor without FLOWHOOK_ALLOW_HTTP refuses an http:// flow: an error log line,
    flowhook_flows_refused{flow} 1, the reason in /readyz, and `flows list` / `flows apply`
    (given FLOWHOOK_PROCESSOR_ENDPOINTS) say so instead of showing it live."""
    port = free_port()
    env = {"FLOWHOOK_METRICS_PORT": str(port), "FLOWHOOK_ALLOW_HTTP": "0", "FLOWHOOK_LOG_FORMAT": "json"}
    worker = WorkerProcess("processor", settings, tmp_path / "p.log", env=env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready([url])
        flow = tmp_path / "plain.yaml"
        flow.write_text("id: plain-http\nstatus: live\ntrigger: {metric: Placed Order}\nsteps:\n"
                        "  - webhook: {id: h, url: 'http://127.0.0.1:9/x'}\n")
        cli_env = {**os.environ, **settings.as_env(), "COLUMNS": "250",
                   "FLOWHOOK_PROCESSOR_ENDPOINTS": f"127.0.0.1:{port}"}
        applied = await asyncio.to_thread(_cli, cli_env, "flows", "apply", "--allow-http", str(flow))
        assert applied.returncode == 1, applied.stdout + applied.stderr
        assert "plain-http was published, but the processor at" in applied.stderr
        _, body = await _get(f"{url}/readyz")
        assert "http" in body["refused_flows"]["plain-http"]
        _, metrics = await _get(f"{url}/metrics")
        assert 'flowhook_flows_refused{flow="plain-http"} 1.0' in metrics
        listed = await asyncio.to_thread(_cli, cli_env, "flows", "list")
        assert "refused by" in listed.stdout, listed.stdout
    finally:
        worker.stop()
    logged = [orjson.loads(line) for line in (tmp_path / "p.log").read_text().splitlines() if line.strip()]
    assert any(line["event"] == "flow_record_refused" and line["level"] == "error" for line in logged)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], env=env, capture_output=True,
                          text=True, timeout=60)
