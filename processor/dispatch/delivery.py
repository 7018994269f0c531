"""The send stage: one HTTP attempt with aiohttp -> an `Attempt`.

`send` makes the request `request.prepare` built, on the shared session, and never raises
for network trouble: every failure becomes a `FailureKind` on the Attempt. The address
policy is enforced twice: on IP literals in `prepare`, and on every resolved address inside
the connector's resolver (`PolicyResolver`), so DNS cannot slip past it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from processor import constants as c
from processor.clock import now_ms
from processor.dispatch import address_policy
from processor.dispatch import secrets as secret_store
from processor.dispatch.attempt import Attempt, Prepared
from processor.dispatch.retry_policy import FailureKind, classify_status, parse_retry_after_ms

# The socket connect may take at most this long, whatever the flow's total timeout.
CONNECT_TIMEOUT_S = 5.0

__all__ = ["PolicyResolver", "make_session", "send"]


class AddressBlocked(OSError):
    """Raised by the resolver when every address of a host is refused by the policy."""


class PolicyResolver(AbstractResolver):
    """Resolves names with aiohttp's resolver and drops every address the policy refuses."""

    def __init__(self, allow_networks: Iterable[Any] = (), inner: AbstractResolver | None = None) -> None:
        self._allow = tuple(allow_networks)
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed, reasons = [], []
        for result in results:
            ip = address_policy.parse_ip(result["host"])
            reason = "unparsable address" if ip is None else address_policy.refusal(ip, self._allow)
            if reason:
                reasons.append(reason)
            else:
                allowed.append(result)
        if not allowed:
            raise AddressBlocked(f"{host} resolves only to refused addresses: {'; '.join(reasons)}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def make_session(
    *, allow_networks: Iterable[Any], concurrency: int, per_destination: int
) -> aiohttp.ClientSession:
    """The one shared session: bounded pool, policy resolver, no cookies."""
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=per_destination,
        resolver=PolicyResolver(allow_networks),
        ttl_dns_cache=30,
    )
    # No `skip_auto_headers`: `prepare` always sets User-Agent and Content-Type, so aiohttp
    # adds neither, and a skip list makes aiohttp copy and merge the headers on every request
    # (about 4 µs each, measured on loopback).
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


async def _read_limited(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """At most MAX_RESPONSE_BYTES of the body; True when more was left unread."""
    length = response.content_length
    if length is not None and length <= c.MAX_RESPONSE_BYTES:
        return await response.read(), False  # the common case: a small body of known length
    chunks: list[bytes] = []
    size = 0
    while size < c.MAX_RESPONSE_BYTES:
        chunk = await response.content.read(c.MAX_RESPONSE_BYTES - size)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), not response.content.at_eof()


def _failure_of(exc: BaseException) -> FailureKind:
    """The failure kind of an exception raised while making a request."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and isinstance(exc.os_error, AddressBlocked):
        return FailureKind.BLOCKED
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.CONNECT_ERROR
    if isinstance(exc, aiohttp.InvalidURL):
        return FailureKind.INVALID
    return FailureKind.CONNECTION_CLOSED


def _error_text(kind: FailureKind, exc: BaseException, prepared: Prepared) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and isinstance(exc.os_error, AddressBlocked):
        detail = str(exc.os_error)
    else:
        detail = str(exc) or type(exc).__name__
    if kind is FailureKind.TIMEOUT:
        detail = f"no response within {prepared.timeout_ms} ms"
    return secret_store.mask(f"{kind.label}: {detail}", prepared.secret_values)


def _excerpt(body: bytes, secret_values: list[str]) -> str | None:
    """The start of a response body; a receiver echoing our headers must not leak a secret."""
    text = body[: c.RESPONSE_EXCERPT_BYTES].decode(errors="replace")
    return secret_store.mask(text, secret_values) if secret_values else text or None


@lru_cache(maxsize=256)
def _timeout(timeout_ms: int) -> aiohttp.ClientTimeout:
    """The (immutable) timeout object of a flow's timeout; built once, not per request."""
    total = timeout_ms / 1000
    return aiohttp.ClientTimeout(total=total, sock_connect=min(total, CONNECT_TIMEOUT_S))


async def send(session: aiohttp.ClientSession, prepared: Prepared) -> Attempt:
    """Make the request once; redirects are not followed and network errors become failures."""
    timeout = _timeout(prepared.timeout_ms)
    sent_at = now_ms()
    started = time.perf_counter()
    try:
        async with session.request(
            prepared.method,
            prepared.url,
            data=prepared.body,
            headers=prepared.headers,
            allow_redirects=False,
            timeout=timeout,
        ) as response:
            body, truncated = await _read_limited(response)
            if truncated:
                response.close()  # do not read the rest, and do not reuse the connection
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        kind = _failure_of(exc)
        return Attempt(
            kind,
            latency_ms=(time.perf_counter() - started) * 1000,
            error=_error_text(kind, exc, prepared),
            sent_at_ms=None if kind is FailureKind.BLOCKED else sent_at,
            finished_at_ms=now_ms(),
        )
    finished = now_ms()
    failure = classify_status(status)
    return Attempt(
        failure,
        http_status=status,
        latency_ms=(time.perf_counter() - started) * 1000,
        error=None if failure is None else f"{failure.label}: HTTP {status}",
        response_excerpt=_excerpt(body, prepared.secret_values),
        sent_at_ms=sent_at,
        finished_at_ms=finished,
        retry_after_ms=parse_retry_after_ms(retry_after, finished) if failure else None,
    )
