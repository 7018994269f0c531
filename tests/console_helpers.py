"""Harness of the console's browser tests: loopback servers on a thread, a real console, Debian's Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

CHROMIUM = os.environ.get("FLOWHOOK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
XSS = "<script>window.__owned = 1</script>"


def need_chromium() -> None:
    """Skip without Debian's Chromium or Playwright, except under CI=true, where that is a failure."""
    missing = []
    if shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM):
        missing.append(f"{CHROMIUM} (Debian package chromium, listed in .ci/packages.d/console.txt)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackServers:
    """aiohttp apps on 127.0.0.1 served from a thread of their own, so sync Playwright tests can use them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def serve(self, app: web.Application) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return int(runner.addresses[0][1])

        return int(self.run(start()))

    def close(self) -> None:
        for runner in self.runners:
            self.run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class ScriptedReceiver:
    """Answers 400 with a `<script>` excerpt until told to accept; records every webhook-id it saw."""

    accept: bool = False
    seen: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        return app

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append(request.headers.get("webhook-id", ""))
        if self.accept:
            return web.json_response({"ok": True})
        return web.Response(status=400, text=f"{XSS} bad request", content_type="text/html")


def profile_endpoint(owned: dict[str, dict[str, Any]], token: str) -> web.Application:
    """A processor worker endpoint as the ops area specifies `GET /profiles/{id}` (see profiles.py)."""

    async def get(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        profile_id = request.match_info["profile_id"]
        if profile_id not in owned:
            return web.json_response({"error": "not_owned"}, status=404)
        return web.json_response({"profile_id": profile_id, "partition": 3, "profile": owned[profile_id],
                                  "runs": []})

    app = web.Application()
    app.router.add_get("/profiles/{profile_id}", get)
    return app


def wait_http(url: str, accept: Callable[[bytes], bool], timeout_s: float, what: str) -> None:
    """Poll a loopback URL until its body satisfies `accept`."""
    deadline = time.monotonic() + timeout_s
    last = b""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL of a test
                last = response.read()
            if accept(last):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not ready after {timeout_s}s (last answer {last[:200]!r})")
