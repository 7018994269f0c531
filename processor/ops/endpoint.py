"""The worker endpoint: `/metrics`, `/healthz`, `/readyz` and (processor) `/profiles/{id}`.

An aiohttp server in the worker's own event loop, so an answer from `/healthz` shows that
the loop is alive. `/readyz` asks the worker (`Readiness`); `/profiles/{id}` exists only
when a bearer token is configured, and compares it in constant time.
"""

from __future__ import annotations

import errno
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.errors import ConfigError
from processor.logs import get_logger
from processor.ops.metrics import WorkerMetrics

log = get_logger(__name__)

__all__ = ["Endpoint", "Readiness"]


@dataclass(frozen=True)
class Readiness:
    """What `/readyz` says: ready or not, and why, with details for people."""

    ready: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# profile id -> (HTTP status, JSON body)
ProfileLookup = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Endpoint:
    """Serve one worker's endpoints on host:port until `stop()`."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        readiness: Callable[[], Readiness],
        *,
        healthy: Callable[[], bool] = lambda: True,
        profiles: ProfileLookup | None = None,
        token: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.healthy = healthy
        self.profiles = profiles if token else None
        self._token = (token or "").encode()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        metrics.on_ready(lambda: self.readiness().ready)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.profiles is not None:
            app.router.add_get("/profiles/{profile_id}", self._profile)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port. A taken port is a ConfigError of one line."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"FLOWHOOK_METRICS_PORT: {host}:{port} is already in use") from None
            message = f"FLOWHOOK_METRICS_HOST/PORT: cannot listen on {host}:{port}: {exc.strerror}"
            raise ConfigError(message) from None
        # The runner's public `addresses` lists the bound sockets (needed for port 0).
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else port
        log.info("endpoint_listening", url=f"http://{host}:{self.port}", role=self.metrics.role,
                 profiles=self.profiles is not None)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        alive = self.healthy()
        return _json(200 if alive else 503, {"status": "ok" if alive else "failing"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        state = self.readiness()
        body = {"ready": state.ready, "role": self.metrics.role, **state.details}
        if state.reason:
            body["reason"] = state.reason
        return _json(200 if state.ready else 503, body)

    async def _profile(self, request: web.Request) -> web.Response:
        if not self._authorized(request.headers.get("Authorization", "")):
            return _json(401, {"error": "unauthorized"})
        assert self.profiles is not None
        status, body = await self.profiles(request.match_info["profile_id"])
        return _json(status, body)

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)


async def start_endpoint(endpoint: Endpoint, host: str, port: int | None) -> Endpoint | None:
    """Start `endpoint` when a port is configured (None: endpoints off)."""
    if port is None:
        return None
    await endpoint.start(host, port)
    return endpoint
