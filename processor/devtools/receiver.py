"""A local webhook receiver: the demo's stand-in for third parties, and bench's target.

It answers 200 (or, for a chosen share of first tries, 503 so retries show), keeps the
last requests for display, and counts every request by path and webhook-id.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from processor.clock import now_ms


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at_ms: int


@dataclass
class Receiver:
    """State of a running receiver; `app` serves it."""

    fail_share: float = 0.0  # share of webhook-ids whose first try gets 503
    keep: int = 20
    recent: deque[ReceivedRequest] = field(default_factory=deque)
    by_path: Counter[str] = field(default_factory=Counter)
    seen_ids: Counter[str] = field(default_factory=Counter)
    total: int = 0
    # bench: bodies carrying "bench_sent_ms" give end-to-end latencies (same machine, same clock)
    latencies_ms: list[float] = field(default_factory=list)
    bench_ids: set[str] = field(default_factory=set)
    first_at_ms: int | None = None
    last_at_ms: int | None = None

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.keep)

    def _should_fail(self, webhook_id: str) -> bool:
        if self.fail_share <= 0 or self.seen_ids[webhook_id] > 1:
            return False
        digest = hashlib.sha256(webhook_id.encode()).digest()
        return digest[0] / 256 < self.fail_share

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        self._count(body, webhook_id)
        self.seen_ids[webhook_id] += 1
        self.by_path[request.path] += 1
        self.recent.append(
            ReceivedRequest(request.method, request.path, {str(k): v for k, v in request.headers.items()},
                            body, now_ms())
        )
        if self._should_fail(webhook_id):
            return web.json_response({"error": "try again"}, status=503)
        return web.json_response({"ok": True, "id": webhook_id})

    def _count(self, body: bytes, webhook_id: str) -> None:
        at = now_ms()
        self.total += 1
        self.first_at_ms = self.first_at_ms or at
        self.last_at_ms = at
        if b"bench_sent_ms" in body:
            sent = orjson.loads(body).get("bench_sent_ms")
            if isinstance(sent, int | str) and str(sent).isdigit() and webhook_id not in self.bench_ids:
                self.bench_ids.add(webhook_id)
                self.latencies_ms.append(at - int(sent))

    async def stats(self, request: web.Request) -> web.Response:
        """Counts; with `?latencies=1` also every latency (bench polls the counts many times a
        second while it measures this process's CPU, and asks for the latencies once)."""
        stats: dict[str, Any] = {"total": self.total, "distinct": len(self.seen_ids),
                                 "bench": len(self.bench_ids), "first_at_ms": self.first_at_ms,
                                 "last_at_ms": self.last_at_ms}
        if request.query.get("latencies"):
            stats["latencies_ms"] = self.latencies_ms
        return web.json_response(stats, dumps=lambda v: orjson.dumps(v).decode())

    async def reset(self, _request: web.Request) -> web.Response:
        self.total, self.first_at_ms, self.last_at_ms = 0, None, None
        self.latencies_ms, self.seen_ids, self.bench_ids = [], Counter(), set()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/__stats", self.stats)
        app.router.add_post("/__reset", self.reset)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def start_receiver(receiver: Receiver, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `receiver` on 127.0.0.1; returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, runner.addresses[0][1]  # the bound port (port 0 picks a free one)


def describe(request: ReceivedRequest) -> dict[str, Any]:
    """A request as the demo prints it: signature shortened, body parsed."""
    headers = {
        k: (v[:24] + "…" if k.lower() in ("webhook-signature", "authorization") else v)
        for k, v in request.headers.items()
        if k.lower().startswith("webhook-") or k.lower() in ("content-type", "authorization")
    }
    try:
        body: Any = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = request.body.decode(errors="replace")
    return {"method": request.method, "path": request.path, "headers": headers, "body": body}


def serve_forever(port: int) -> None:
    """Entry point for a receiver in its own process (bench): serve until killed."""
    import uvloop  # optional: a dependency only where it builds (not on Windows)

    async def main() -> None:
        runner, _ = await start_receiver(Receiver(), port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())


if __name__ == "__main__":
    import sys

    serve_forever(int(sys.argv[1]))
