"""Asking the running processors what they think of the flows (`flows list`, `flows apply`).

A processor that refuses a published flow (for instance an `http://` URL without
`FLOWHOOK_ALLOW_HTTP`) says so in its `/readyz` body; tools that know the processors'
endpoints (`FLOWHOOK_PROCESSOR_ENDPOINTS`, comma-separated host:port, the same variable the
console uses) show it next to the flow.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiohttp

__all__ = ["endpoints_from_env", "refusals"]

ENV: str = "FLOWHOOK_PROCESSOR_ENDPOINTS"


def endpoints_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    text = (os.environ if env is None else env).get(ENV, "")
    return [part.strip() for part in text.split(",") if part.strip()]


async def _refused(session: aiohttp.ClientSession, endpoint: str) -> dict[str, str] | None:
    try:
        async with session.get(f"http://{endpoint}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as r:
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None  # not reachable: say nothing about it
    refused = body.get("refused_flows") if isinstance(body, dict) else None
    return refused if isinstance(refused, dict) else {}


async def refusals(endpoints: list[str]) -> dict[str, dict[str, str]]:
    """flow id -> {endpoint: why that processor refuses it}, over the processors that answer."""
    found: dict[str, dict[str, str]] = {}
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_refused(session, e) for e in endpoints))
    for endpoint, refused in zip(endpoints, answers, strict=True):
        for flow_id, reason in (refused or {}).items():
            found.setdefault(flow_id, {})[endpoint] = str(reason)
    return found
