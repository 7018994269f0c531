"""Test harness of the dispatcher: webhook-due records, scripted loopback receivers, results."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from processor import records
from processor.clock import iso, now_ms
from processor.kafka import ensure_topics, make_producer, read_records
from processor.records.due import due_from
from processor.settings import Settings

_counter = itertools.count()


def due_record(
    url: str,
    *,
    mode: str = "send",
    error: str | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
    signing_secrets: list[str] | None = None,
    timeout_ms: int = 5_000,
    retry_ms: list[int] | None = None,
    max_age_ms: int = 600_000,
    rate_limit: float | None = None,
    flow_id: str = "test-flow",
    step_id: str = "hook",
    attempt: int = 1,
    not_before_ms: int | None = None,
) -> dict[str, Any]:
    """A webhook-due record as the engine emits it (its JSON value, built with the type's
    constructor); checked against schemas/webhook.schema.json."""
    n = next(_counter)
    event_id, profile_id = f"evt_{n}_{time.time_ns()}", f"p_{n}"
    run = records.run_id(flow_id, profile_id, event_id)
    record = records.as_dict(records.WebhookDue(
        delivery_id=records.delivery_id(flow_id, run, step_id),
        flow_id=flow_id,
        flow_version=1,
        flow_name="Test flow",
        step_id=step_id,
        run_id=run,
        profile_id=profile_id,
        event_id=event_id,
        metric="Placed Order",
        mode=mode,  # type: ignore[arg-type]
        error=error,
        request=records.Request(
            method="POST",
            url=url,
            headers=headers or {},
            secret_headers=secret_headers or {},
            body=orjson.dumps(body if body is not None else {"n": n}).decode(),
            signing_secrets=signing_secrets or [],
        ),
        options=records.Options(timeout_ms=timeout_ms, retry_ms=retry_ms, max_age_ms=max_age_ms,
                                rate_limit=rate_limit),
        due_at=iso(now_ms()),
        created_at=iso(now_ms()),
        attempt=attempt,
        not_before=iso(not_before_ms) if not_before_ms else None,
        first_attempt_at=iso(now_ms()) if attempt > 1 else None,
    ))
    problem = records.validation_error("webhook", record)
    assert problem is None, problem
    return record


def typed_due(url: str, **options: Any) -> records.WebhookDue:
    """`due_record` as the dispatcher holds it: the typed record."""
    return due_from(due_record(url, **options))


async def produce(settings: Settings, dues: list[dict[str, Any]], topic: str | None = None) -> None:
    """Produce webhook-due records (keyed by delivery id) and wait for the broker's acks."""
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        acks = [
            await producer.send(
                topic or settings.topics.webhooks, orjson.dumps(d), key=d["delivery_id"].encode()
            )
            for d in dues
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def produce_raw(settings: Settings, topic: str, values: list[bytes]) -> None:
    """Produce raw bytes, as a broken or foreign producer might."""
    producer = make_producer(settings)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=b"raw") for value in values])
    finally:
        await producer.stop()


async def read_values(settings: Settings, topic: str, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Every record of a topic, decoded, reading until idle."""
    return [orjson.loads(r.value) async for r in read_records(settings, topic, idle_s=idle_s)]


def by_delivery(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Delivery results grouped by delivery id, in topic order (one partition per id)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[result["delivery_id"]].append(result)
    return grouped


@dataclass
class Hit:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedReceiver:
    """A loopback aiohttp server whose answer per path depends on how often an id was seen."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits_for(self, webhook_id: str) -> list[Hit]:
        return [h for h in self.hits if h.headers.get("webhook-id") == webhook_id]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hit = Hit(request.path, dict(request.headers), body, time.monotonic())
        self.hits.append(hit)
        seen = len(self.hits_for(hit.headers.get("webhook-id", "")))
        behaviour = self.behaviours.get(request.path, ok)
        return await behaviour(request, seen)

    async def start(self, port: int = 0) -> ScriptedReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def ok(_request: web.Request, _seen: int) -> web.StreamResponse:
    return web.json_response({"ok": True})


def status_then_ok(status: int, times: int = 1, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer `status` to the first `times` tries of each webhook-id, then 200."""

    async def behaviour(_request: web.Request, seen: int) -> web.StreamResponse:
        if seen <= times:
            return web.json_response({"error": status}, status=status, headers=headers)
        return web.json_response({"ok": True})

    return behaviour


def always(status: int, headers: dict[str, str] | None = None, body: bytes = b"no") -> Behaviour:
    async def behaviour(_request: web.Request, _seen: int) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return behaviour


def hang_then_ok(times: int = 1, hang_s: float = 30.0) -> Behaviour:
    """Hang (no answer) on the first `times` tries of each webhook-id, then 200."""

    async def behaviour(request: web.Request, seen: int) -> web.StreamResponse:
        if seen <= times:
            await asyncio.sleep(hang_s)
        return await ok(request, seen)

    return behaviour


def close_then_ok(times: int = 1) -> Behaviour:
    """Drop the connection without an answer on the first `times` tries, then 200."""

    async def behaviour(request: web.Request, seen: int) -> web.StreamResponse:
        if seen <= times:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            raise ConnectionResetError("closed by the test receiver")
        return await ok(request, seen)

    return behaviour


def slow(delay_s: float) -> Behaviour:
    async def behaviour(request: web.Request, seen: int) -> web.StreamResponse:
        await asyncio.sleep(delay_s)
        return await ok(request, seen)

    return behaviour


def check_results(results: list[dict[str, Any]]) -> None:
    """Every result record matches schemas/result.schema.json."""
    for result in results:
        problem = records.validation_error("result", result)
        assert problem is None, (problem, result)


def due_like(url: str = "https://example.invalid/x", **fields: Any) -> records.WebhookDue:
    """A webhook-due record with made-up ids (the constructor does not check them), for tests
    of what is built from one (result records, summaries); `fields` override the defaults."""
    request = records.Request(method="POST", url=url, headers={}, secret_headers={}, body=None,
                              signing_secrets=[])
    options = records.Options(timeout_ms=5_000, retry_ms=None, max_age_ms=600_000, rate_limit=None)
    values: dict[str, Any] = {
        "delivery_id": "d1", "flow_id": "f", "flow_version": 1, "step_id": "s", "run_id": "r",
        "profile_id": "p", "event_id": "e", "metric": "m", "mode": "send", "request": request,
        "options": options, "due_at": "2026-11-27T10:00:00Z", "attempt": 1, **fields,
    }
    return records.WebhookDue(**values)


def result_dict(due: records.WebhookDue, **fields: Any) -> dict[str, Any]:
    """`records.delivery_result` as its JSON value."""
    return records.as_dict(records.delivery_result(due, **fields))
