"""Waiting for workers to be ready, from the outside: poll their `/readyz` (demo, dev)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["Figures", "all_ready", "wait_for_figure", "wait_ready"]


async def _ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        url, timeout = f"http://127.0.0.1:{port}/readyz", aiohttp.ClientTimeout(total=2)
        async with session.get(url, timeout=timeout) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def all_ready(ports: list[int]) -> bool:
    async with aiohttp.ClientSession() as session:
        return all([await _ready(session, port) for port in ports])


async def wait_ready(ports: list[int], timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """True once every port's /readyz answers 200; False on timeout or when `alive()` turns false."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and alive():
            if all([await _ready(session, port) for port in ports]):
                return True
            await asyncio.sleep(0.2)
    return False


@dataclass(frozen=True)
class Figures:
    """One look at a worker: its /readyz body and its /metrics samples."""

    readyz: dict[str, Any]
    metrics: dict[str, float]

    def sample(self, name: str) -> float:
        """A sample by its exposition name, e.g. `flowhook_ready` or `x_total{a="b"}` (0 if absent)."""
        return self.metrics.get(name, 0.0)


async def figures(session: aiohttp.ClientSession, port: int) -> Figures:
    base, timeout = f"http://127.0.0.1:{port}", aiohttp.ClientTimeout(total=2)
    async with session.get(f"{base}/readyz", timeout=timeout) as r:
        readyz = await r.json()
    async with session.get(f"{base}/metrics", timeout=timeout) as r:
        text = await r.text()
    metrics = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metrics[name] = float(value)
    return Figures(readyz, metrics)


async def wait_for_figure(port: int, holds: Callable[[Figures], bool], timeout_s: float) -> bool:
    """True once `holds(figures of the worker on port)`; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                if holds(await figures(session, port)):
                    return True
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.1)
    return False
