"""Deferred tries are not attempts (SPEC §3): an open circuit and a missing secret cost time only."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from processor.devtools.broker import free_port
from processor.dispatch.replay import ReplayFilter, replay
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.settings import Settings
from tests.dispatch_helpers import (
    ScriptedReceiver,
    always,
    by_delivery,
    check_results,
    due_record,
    produce,
    read_values,
)

pytestmark = pytest.mark.quick_groups


async def _drain(settings: Settings, **options: Any) -> None:
    opts = DispatcherOptions(**{"drain_idle_s": 1.0, **options})
    await asyncio.wait_for(run_dispatcher(settings, options=opts), timeout=90)


def _down_for(seconds: float) -> Any:
    """503 for the first `seconds` after the first request, then 200 (a deploy)."""
    started: list[float] = []

    async def behaviour(_request: web.Request, _seen: int) -> web.StreamResponse:
        started.append(time.monotonic())
        if time.monotonic() - started[0] < seconds:
            return web.Response(status=503, body=b"deploying")
        return web.json_response({"ok": True})

    return behaviour


async def _run_against(
    settings: Settings, receiver: ScriptedReceiver, path: str, count: int, *, retry_ms: list[int],
    **options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` deliveries to `path`, a dispatcher until drained (breaker threshold 3): the
    records and every result, checked against the schema."""
    await receiver.start()
    dues = [due_record(receiver.url(path), retry_ms=retry_ms) for _ in range(count)]
    await produce(settings, dues)
    try:
        await _drain(settings, breaker_threshold=3, **options)
    finally:
        await receiver.stop()
    results = await read_values(settings, settings.topics.results)
    check_results(results)
    return dues, results


async def test_an_open_circuit_spends_no_retries_and_dead_keeps_the_last_status(settings: Settings) -> None:
    """A destination that always answers 500, retry [200ms, 200ms], a breaker that opens after 3:
    every delivery still gets its 3 real tries, and `dead` carries HTTP 500 and the response."""
    receiver = ScriptedReceiver({"/down": always(500, body=b'{"error": "boom"}')})
    dues, results = await _run_against(settings, receiver, "/down", 5, retry_ms=[200, 200],
                                       per_destination=2, breaker_cooldown_ms=300)
    grouped = by_delivery(results)
    assert any(r.get("deferred") for r in results)  # the circuit did open
    for due in dues:
        assert len(receiver.hits_for(due["delivery_id"])) == 3
        real = [r for r in grouped[due["delivery_id"]] if not r.get("deferred")]
        assert [(r["attempt"], r["outcome"]) for r in real] == [
            (1, "retry_scheduled"), (2, "retry_scheduled"), (3, "dead")]
        dead = real[-1]
        assert dead["http_status"] == 500 and "boom" in dead["response_excerpt"]
        assert "retries exhausted after 3 attempts" in dead["error"]


async def test_a_destination_down_for_a_deploy_loses_no_delivery(settings: Settings) -> None:
    """503 for 2 s, then up; retry [300ms, 300ms]; the breaker opens: every delivery ends delivered."""
    receiver = ScriptedReceiver({"/deploy": _down_for(2.0)})
    dues, results = await _run_against(settings, receiver, "/deploy", 30, retry_ms=[300, 300],
                                       per_destination=4, breaker_cooldown_ms=500)
    final = {d: rs[-1]["outcome"] for d, rs in by_delivery(results).items()}
    assert set(final.values()) == {"delivered"} and len(final) == len(dues)
    assert any(r.get("deferred") for r in results)


async def test_a_missing_secret_waits_until_it_is_set(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery whose header needs an unset secret is deferred (named, not sent); once the
    secret is set, the next try sends it with the secret, and nothing is marked invalid."""
    monkeypatch.delenv("FLOWHOOK_SECRET_LATE_TOKEN", raising=False)
    settings = settings.with_(metrics_port=free_port())
    value = "late-" + uuid.uuid4().hex
    receiver = await ScriptedReceiver().start()
    headers = {"Authorization": "Bearer {{ secrets.LATE_TOKEN }}"}
    due = due_record(receiver.url("/late"), secret_headers=headers)
    await produce(settings, [due])
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, options=DispatcherOptions(), stop=stop))
    try:
        deadline = time.monotonic() + 30
        while not any(r.get("deferred") for r in await read_values(settings, settings.topics.results, 0.3)):
            assert time.monotonic() < deadline and not task.done()
        assert not receiver.hits
        metrics = await _scrape(settings)
        assert 'flowhook_secret_missing_total{secret="LATE_TOKEN"}' in metrics  # by name
        monkeypatch.setenv("FLOWHOOK_SECRET_LATE_TOKEN", value)
        while not receiver.hits:
            assert time.monotonic() < deadline + 15 and not task.done()
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await receiver.stop()
    assert receiver.hits[0].headers["Authorization"] == f"Bearer {value}"
    results = await read_values(settings, settings.topics.results)
    outcomes = [(r["attempt"], r["outcome"], bool(r.get("deferred"))) for r in results]
    assert outcomes == [(1, "retry_scheduled", True), (1, "delivered", False)]
    assert "secret LATE_TOKEN is not set" in results[0]["error"] and value not in str(results)


async def _scrape(settings: Settings) -> str:
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_replay_outcome_failed_and_invalid_sends_those_again(settings: Settings) -> None:
    """`replay --outcome failed` re-sends only failed deliveries, `--outcome invalid` only invalid
    ones, each with its original webhook-id; dead ones stay dead."""
    receiver = await ScriptedReceiver({"/f": always(400), "/d": always(503)}).start()
    failed = [due_record(receiver.url("/f")) for _ in range(2)]
    invalid = due_record(receiver.url("/i"), mode="invalid", error="body is not JSON")
    dead = due_record(receiver.url("/d"), retry_ms=[])
    await produce(settings, [*failed, invalid, dead])
    try:
        await _drain(settings)
        receiver.behaviours = {"/d": always(503)}  # the failing destination is fixed
        env = {**os.environ, **settings.as_env()}
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", "replay", "--outcome", "failed", "--idle", "1", env=env
        )
        assert await asyncio.wait_for(cli.wait(), 60) == 0
        counts = await replay(settings, ReplayFilter(), outcome="invalid", idle_s=1.0)
        await _drain(settings)
    finally:
        await receiver.stop()
    assert counts == {"replayed": 1, "skipped": 0}
    grouped = by_delivery(await read_values(settings, settings.topics.results))
    for due in failed:
        assert [r["outcome"] for r in grouped[due["delivery_id"]]] == ["failed", "delivered"]
        assert len(receiver.hits_for(due["delivery_id"])) == 2
    assert [r["outcome"] for r in grouped[invalid["delivery_id"]]] == ["invalid", "invalid"]
    assert [r["outcome"] for r in grouped[dead["delivery_id"]]] == ["dead"]


def test_dev_sets_the_example_secrets_and_names_the_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`flowhook dev` gives the example flows their demo secrets and names any other one missing
    (by variable name only); a secret already in the environment is left alone."""
    from structlog.testing import capture_logs

    from processor.devtools.devserver import example_secrets
    from processor.devtools.stack import read_definition
    from tests.engine_helpers import definition

    monkeypatch.delenv("FLOWHOOK_SECRET_DIRECT_MAIL_TOKEN", raising=False)
    monkeypatch.delenv("FLOWHOOK_SECRET_NOT_AN_EXAMPLE", raising=False)
    monkeypatch.setenv("FLOWHOOK_SECRET_CRM_TOKEN", "mine")
    examples = Path(__file__).resolve().parents[2] / "examples" / "flows"
    ours = definition("x", steps=[{"webhook": {"id": "h", "url": "https://example.com/h",
                                               "headers": {"X-Key": "{{ secrets.NOT_AN_EXAMPLE }}"}}}])
    defs = [read_definition(examples / "order-to-direct-mail.yaml"),
            read_definition(examples / "subscriber-to-crm.yaml"), ours]
    with capture_logs() as logs:
        env = example_secrets(defs)
    assert set(env) == {"FLOWHOOK_SECRET_DIRECT_MAIL_TOKEN", "FLOWHOOK_SECRET_DIRECT_MAIL_SIGNING"}
    missing = [e for e in logs if e["event"] == "secrets_missing"]
    assert missing and missing[0]["secrets"] == ["FLOWHOOK_SECRET_NOT_AN_EXAMPLE"]
