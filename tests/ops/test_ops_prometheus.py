"""A real Prometheus scrapes both workers with the config shipped in deploy/prometheus; what
it reports through its query API matches the results topic record for record."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess
from processor.kafka import read_records
from processor.settings import Settings
from tests.engine_helpers import definition, event, event_bytes, produce, publish_flows

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy" / "prometheus"
PROFILES = 16
# Per profile one terminal outcome in each flow: ok delivered, bad failed, down dead (after a
# retry), flaky delivered (after a retry), held held. How many retry_scheduled records lead there
# depends on timing: the failing paths open the breaker of the receiver's host:port, and each try
# it defers is recorded too, so the test waits for terminal outcomes, not for a record count.
TERMINAL_OUTCOMES = {"delivered", "failed", "dead", "held"}
EXPECTED_TERMINAL = {
    ("ok", "ok-hook", "delivered"), ("bad", "bad-hook", "failed"), ("down", "down-hook", "dead"),
    ("flaky", "flaky-hook", "delivered"), ("held", "held-hook", "held"),
}


def _hook(step_id: str, url: str, **options: Any) -> dict[str, Any]:
    return {"webhook": {"id": step_id, "url": url, "body": {"email": "{{ person.email }}"}, **options}}


def _flows(base: str) -> list[dict[str, Any]]:
    return [
        definition("ok", steps=[_hook("ok-hook", f"{base}/ok")]),
        definition("bad", steps=[_hook("bad-hook", f"{base}/bad")]),
        definition("down", steps=[_hook("down-hook", f"{base}/down", retry=["1s"])]),
        definition("flaky", steps=[_hook("flaky-hook", f"{base}/flaky", retry=["1s"])]),
        definition("held", status="manual", steps=[_hook("held-hook", f"{base}/ok")]),
    ]


async def _receiver() -> tuple[web.AppRunner, int]:
    seen: set[str] = set()

    async def handle(request: web.Request) -> web.Response:
        path, webhook_id = request.path, request.headers.get("webhook-id", "")
        if path == "/bad":
            return web.json_response({"error": "no such customer"}, status=400)
        if path == "/down" or (path == "/flaky" and webhook_id not in seen):
            seen.add(webhook_id)
            return web.json_response({"error": "try later"}, status=503)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _scrape_config(tmp: Path, targets: dict[str, int]) -> Path:
    """The shipped config with loopback targets, a 1 s interval and the shipped alert rules."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        role = job["job_name"].removeprefix("flowhook-")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[role]}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, int]]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the Debian package `prometheus` is needed (.ci/packages.d/ops.txt lists it)")
    targets = {"processor": free_port(), "dispatcher": free_port()}
    port = free_port()
    config = _scrape_config(tmp_path, targets)
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield tmp_path, port, targets
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


async def _query(port: int, promql: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}
    ) as response:
        body = await response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _counts(port: int, promql: str, labels: tuple[str, ...]) -> Counter[tuple[str, ...]]:
    return Counter({tuple(r["metric"][name] for name in labels): int(float(r["value"][1]))
                    for r in await _query(port, promql)})


async def _wait_for_terminal(settings: Settings, count: int, timeout_s: float) -> None:
    """Follow the results topic until `count` deliveries have a terminal outcome (or the time is up)."""
    terminal: set[str] = set()
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        return len(terminal) >= count or time.monotonic() > deadline

    async for record in read_records(settings, settings.topics.results, follow=True, stop=done):
        result = orjson.loads(record.value)
        if result["type"] == "delivery" and result["outcome"] in TERMINAL_OUTCOMES:
            terminal.add(result["delivery_id"])


async def test_prometheus_counts_match_the_results_topic(
    settings: Settings, prometheus: tuple[Path, int, dict[str, int]]
) -> None:
    """Deliveries by flow, step and outcome, runs by flow and status, and events by outcome, as
    Prometheus scraped them, equal what the results topic says; lag and latency are there."""
    tmp, prom_port, targets = prometheus
    runner, port = await _receiver()
    await publish_flows(settings, *_flows(f"http://127.0.0.1:{port}"))
    workers = [
        WorkerProcess(role, settings, tmp / f"{role}.log",
                      env={"FLOWHOOK_METRICS_PORT": str(targets[role])}).start()
        for role in ("processor", "dispatcher")
    ]
    try:
        events = [event_bytes(event(f"e{n}", pid=f"p{n}")) for n in range(PROFILES)]
        await produce(settings, settings.topics.events, [*events, (b"p0", b"not json")])
        await _wait_for_terminal(settings, PROFILES * len(EXPECTED_TERMINAL), timeout_s=90)
        results = [orjson.loads(r.value)
                   async for r in read_records(settings, settings.topics.results, idle_s=1)]
        want = _expected(settings, results)
        deliveries = want[DELIVERIES][0]
        terminal = {key: n for key, n in deliveries.items() if key[2] in TERMINAL_OUTCOMES}
        assert terminal == dict.fromkeys(EXPECTED_TERMINAL, PROFILES), [w.tail() for w in workers]
        got = await _scraped(prom_port, want)
        for query, (expected, _) in want.items():
            assert got[query] == expected, query

        latency = await _query(prom_port, "sum(flowhook_delivery_seconds_count)")
        # One observation per request made: not for held records, nor for tries the circuit
        # breaker skipped (the receiver's failures open it), which carry no latency either.
        requests = sum(1 for r in results if r["type"] == "delivery" and r["latency_ms"] is not None)
        assert int(float(latency[0]["value"][1])) == requests
        lag = await _query(prom_port, "count by (job) (flowhook_consumer_lag)")
        assert {r["metric"]["job"] for r in lag} == {"flowhook-processor", "flowhook-dispatcher"}
        ready = await _query(prom_port, "flowhook_ready")
        assert sorted(float(r["value"][1]) for r in ready) == [1.0, 1.0]
        assert await _query(prom_port, "flowhook_breaker_open") != []
        rules = await _rules(prom_port)
        assert {"FlowhookDeadDeliveries", "FlowhookConsumerLagHigh", "FlowhookBreakerOpen"} <= rules
    finally:
        for worker in workers:
            worker.stop()
        await runner.cleanup()


DELIVERIES = "sum by (flow, step, outcome) (flowhook_deliveries_total)"
Expected = dict[str, tuple[Counter[tuple[str, ...]], tuple[str, ...]]]


def _expected(settings: Settings, results: list[dict[str, Any]]) -> Expected:
    """PromQL query -> (the counts the results topic and the input give, the labels to group by)."""
    events = settings.topics.events
    deliveries = Counter(
        (r["flow_id"], r["step_id"], r["outcome"]) for r in results if r["type"] == "delivery"
    )
    runs = Counter((r["flow_id"], r["status"]) for r in results if r["type"] == "run")
    return {
        DELIVERIES: (deliveries, ("flow", "step", "outcome")),
        "sum by (flow, status) (flowhook_runs_total)": (runs, ("flow", "status")),
        'sum by (topic, outcome) (flowhook_events_total{topic!~".*wakeups"})': (
            Counter({(events, "accepted"): PROFILES, (events, "invalid"): 1}), ("topic", "outcome")),
        "sum by (topic) (flowhook_invalid_records_total)": (Counter({(events,): 1}), ("topic",)),
    }


async def _scraped(port: int, want: Expected) -> dict[str, Counter[tuple[str, ...]]]:
    """What Prometheus answers for each query, once it equals `want` or after 30 s."""
    got: dict[str, Counter[tuple[str, ...]]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = {query: await _counts(port, query, labels) for query, (_, labels) in want.items()}
        if all(got[query] == expected for query, (expected, _) in want.items()):
            break
        await asyncio.sleep(0.5)
    return got


async def _rules(port: int) -> set[str]:
    """Alert names Prometheus loaded from the shipped rules file."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/api/v1/rules") as r:
        body = await r.json()
    return {rule["name"] for group in body["data"]["groups"] for rule in group["rules"]}


def test_shipped_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """deploy/prometheus/alerts.yml and the scrape config are valid for promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool (Debian package `prometheus`) is needed")
    rules = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 5 rules found" in rules.stdout
    config = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, cwd=DEPLOY)
    assert config.returncode == 0, config.stdout + config.stderr
