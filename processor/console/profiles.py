"""A profile as the processor holds it, from whichever processor worker owns it.

Each processor serves `GET /profiles/{profile_id}` on its worker endpoint with
`Authorization: Bearer <FLOWHOOK_ENDPOINT_TOKEN>`: 200 `{"profile_id", "partition",
"profile": {...}, "runs": [...]}` from the worker that owns the profile, 404
`{"error": "not_owned"}` from the others (404 `unknown_profile` from the owner when it holds
no such profile, 503 `recovering` while its state recovers). The console asks each endpoint
of `FLOWHOOK_PROCESSOR_ENDPOINTS` (comma-separated host:port) in turn until one owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

TIMEOUT_S = 3.0


@dataclass
class Lookup:
    """What the lookup found: the processor's answer, or why there is none."""

    answer: dict[str, Any] | None = None
    endpoint: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_endpoints(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


async def lookup(endpoints: tuple[str, ...], token: str | None, profile_id: str) -> Lookup:
    """Ask each endpoint for `profile_id`; the first 200 wins, 404 not_owned moves on."""
    found = Lookup()
    if not endpoints:
        found.notes.append("no processor endpoints are configured (FLOWHOOK_PROCESSOR_ENDPOINTS)")
        return found
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        for endpoint in endpoints:
            note = await _ask(session, endpoint, profile_id, found)
            if found.answer is not None:
                return found
            found.notes.append(f"{endpoint}: {note}")
    return found


async def _ask(session: aiohttp.ClientSession, endpoint: str, profile_id: str, found: Lookup) -> str:
    url = f"http://{endpoint}/profiles/{quote(profile_id, safe='')}"
    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status == 200:
                answer = await response.json()
                if isinstance(answer, dict) and isinstance(answer.get("profile"), dict):
                    found.answer, found.endpoint = answer, endpoint
                    return "owns the profile"
                return "answered 200 without a profile"
            if response.status in (404, 503):
                return _not_here(response.status, await _json_or_empty(response))
            if response.status in (401, 403):
                return f"refused the console's token ({response.status}); check FLOWHOOK_ENDPOINT_TOKEN"
            return f"answered {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"unreachable ({type(exc).__name__})"


async def _json_or_empty(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _not_here(status: int, body: dict[str, Any]) -> str:
    error = body.get("error")
    if status == 503:
        return f"is recovering its state (partition {body.get('partition')}); try again shortly"
    if error == "unknown_profile":
        return "owns the profile's partition but holds no such profile"
    return "does not own this profile"
