"""One HTTP attempt of a webhook-due record with aiohttp -> an `Attempt`.

`prepare` turns a webhook-due record into the exact request (secrets resolved, signed,
policy checked before anything is sent); `send` makes the request on the shared session
and never raises for network trouble: every failure becomes a `FailureKind` on the Attempt.
The address policy is enforced twice: on IP literals in `prepare`, and on every resolved
address inside the connector's resolver (`PolicyResolver`), so DNS cannot slip past it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

import processor
from processor import constants as c
from processor.clock import now_ms
from processor.dispatch import address_policy, signing
from processor.dispatch import secrets as secret_store
from processor.dispatch.retry_policy import FailureKind, classify_status, parse_retry_after_ms

USER_AGENT = c.USER_AGENT_PREFIX + processor.__version__
# The socket connect may take at most this long, whatever the flow's total timeout.
CONNECT_TIMEOUT_S = 5.0
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"[A-Za-z0-9_.-]+")

__all__ = [
    "Attempt",
    "PolicyResolver",
    "Prepared",
    "RequestRefused",
    "destination_key",
    "make_session",
    "prepare",
    "send",
]


# Attempt and Prepared are made once per delivery: plain slotted dataclasses, because a
# frozen one's __init__ sets every field through object.__setattr__ (about 0.7 µs more each).
@dataclass(slots=True)
class Attempt:
    """What one attempt came to; `failure` is None when it was delivered (2xx). Not mutated."""

    failure: FailureKind | None
    http_status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_excerpt: str | None = None
    sent_at_ms: int | None = None
    finished_at_ms: int | None = None
    retry_after_ms: int | None = None

    @property
    def delivered(self) -> bool:
        return self.failure is None


@dataclass(slots=True)
class Prepared:
    """A request ready to go; `secret_values` are only kept to mask error texts. Not mutated."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)  # may hold resolved secrets
    body: bytes = field(repr=False)
    destination: str = ""
    timeout_ms: int = 0
    secret_values: list[str] = field(default_factory=list, repr=False)


class RequestRefused(Exception):
    """`prepare` refused a record before sending; `attempt` is its outcome."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.error)
        self.attempt = attempt


class AddressBlocked(OSError):
    """Raised by the resolver when every address of a host is refused by the policy."""


@lru_cache(maxsize=4096)
def destination_key(url: str) -> str:
    """host:port of a URL: the unit of concurrency limits, rate limits and breakers."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _refuse(kind: FailureKind, error: str) -> RequestRefused:
    return RequestRefused(Attempt(kind, error=error, finished_at_ms=now_ms()))


@lru_cache(maxsize=4096)
def url_refusal(
    url: str, allow_http: bool, allow_networks: tuple[Any, ...]
) -> tuple[FailureKind, str] | None:
    """Why a URL is refused before any connection (scheme, IP literal), or None. Cached per URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return FailureKind.INVALID, f"not a valid URL: {exc}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return FailureKind.INVALID, f"not an http(s) URL: {parts.scheme}://{parts.hostname}"
    if address_policy.parse_ip(parts.hostname) is None and not _valid_host(parts.hostname):
        return FailureKind.INVALID, f"not a valid host name: {parts.hostname!r}"
    if parts.scheme == "http" and not allow_http:
        return FailureKind.BLOCKED, "http is not allowed (https only; see FLOWHOOK_ALLOW_HTTP)"
    literal = address_policy.parse_ip(parts.hostname)
    if literal is not None:
        reason = address_policy.refusal(literal, allow_networks)
        if reason:
            return FailureKind.BLOCKED, reason
    return None


def _valid_host(host: str) -> bool:
    try:
        ascii_host = host.encode("idna").decode()
    except UnicodeError:
        return False
    return bool(_HOST.fullmatch(ascii_host))


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise _refuse(FailureKind.INVALID, f"header name {name!r} is not a valid HTTP token")
    if any(ch in value for ch in "\r\n\x00"):
        raise _refuse(FailureKind.INVALID, f"header {name} has a line break or NUL in its value")


def _flow_headers(request: Mapping[str, Any], env: Mapping[str, str] | None) -> tuple[dict[str, str], list]:
    headers = {k: v for k, v in request["headers"].items() if k.lower() not in c.RESERVED_HEADERS}
    values: list[str] = []
    for name, template in request["secret_headers"].items():
        if name.lower() in c.RESERVED_HEADERS:
            continue
        names = secret_store.secret_names(template)
        headers[name] = secret_store.resolve_template(template, env)
        values.extend(secret_store.secret_value(n, env) for n in names)
    for name, value in headers.items():
        _check_header(name, value)
    return headers, values


def _standard_headers(
    delivery_id: str, body: bytes, signing_names: list[str], env: Mapping[str, str] | None
) -> tuple[dict[str, str], list[str]]:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        c.HEADER_WEBHOOK_ID: delivery_id,
        c.HEADER_WEBHOOK_TIMESTAMP: str(timestamp),
    }
    secrets = [secret_store.secret_value(name, env) for name in signing_names]
    if secrets:
        headers[c.HEADER_WEBHOOK_SIGNATURE] = signing.signature_header(secrets, delivery_id, timestamp, body)
    return headers, secrets


def prepare(
    due: Mapping[str, Any],
    *,
    allow_http: bool,
    allow_networks: Iterable[Any] = (),
    env: Mapping[str, str] | None = None,
) -> Prepared:
    """The request for a webhook-due record; raises RequestRefused (blocked/invalid) instead,
    or SecretMissing when a secret it needs is not set."""
    request = due["request"]
    url = request["url"]
    refused = url_refusal(url, allow_http, tuple(allow_networks))
    if refused is not None:
        raise _refuse(*refused)
    body = (request["body"] or "").encode()
    try:
        headers, values = _flow_headers(request, env)
        standard, signing_values = _standard_headers(
            due["delivery_id"], body, request["signing_secrets"], env
        )
    except secret_store.SecretMissing:
        raise  # not the delivery's fault: the caller defers it until the secret is set
    except (secret_store.SecretError, signing.SigningError) as exc:
        raise _refuse(FailureKind.INVALID, str(exc)) from None
    headers.update(standard)  # after the flow's headers, so these always win
    return Prepared(
        method=request["method"],
        url=url,
        headers=headers,
        body=body,
        destination=destination_key(url),
        timeout_ms=int(due["options"]["timeout_ms"]),
        secret_values=values + signing_values,
    )


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
