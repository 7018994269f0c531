"""The request stage: a webhook-due record -> the exact request to make, or why not (pure).

`prepare` resolves secrets, signs, and checks the URL against the address policy (scheme,
IP literals) before anything is sent; refusals are `RequestRefused` with their `Attempt`
outcome, an unset secret is `SecretMissing` (the caller defers the try). `delivery` makes
the request with aiohttp; this module imports no HTTP client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import processor
from processor import constants as c
from processor.clock import now_ms
from processor.dispatch import address_policy, signing
from processor.dispatch import secrets as secret_store
from processor.dispatch.attempt import Attempt, Prepared
from processor.dispatch.destination import destination_key
from processor.dispatch.retry_policy import FailureKind
from processor.records.types import Request, WebhookDue

USER_AGENT = c.USER_AGENT_PREFIX + processor.__version__
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"[A-Za-z0-9_.-]+")

__all__ = ["USER_AGENT", "RequestRefused", "prepare", "url_refusal"]


class RequestRefused(Exception):
    """`prepare` refused a record before sending; `attempt` is its outcome."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.error)
        self.attempt = attempt


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


def _flow_headers(request: Request, env: Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in c.RESERVED_HEADERS}
    values: list[str] = []
    for name, template in request.secret_headers.items():
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
    due: WebhookDue,
    *,
    allow_http: bool,
    allow_networks: Iterable[Any] = (),
    env: Mapping[str, str] | None = None,
) -> Prepared:
    """The request for a webhook-due record; raises RequestRefused (blocked/invalid) instead,
    or SecretMissing when a secret it needs is not set."""
    request = due.request
    url = request.url
    refused = url_refusal(url, allow_http, tuple(allow_networks))
    if refused is not None:
        raise _refuse(*refused)
    body = (request.body or "").encode()
    try:
        headers, values = _flow_headers(request, env)
        standard, signing_values = _standard_headers(
            due.delivery_id, body, request.signing_secrets, env
        )
    except secret_store.SecretMissing:
        raise  # not the delivery's fault: the caller defers it until the secret is set
    except (secret_store.SecretError, signing.SigningError) as exc:
        raise _refuse(FailureKind.INVALID, str(exc)) from None
    headers.update(standard)  # after the flow's headers, so these always win
    return Prepared(
        method=request.method,
        url=url,
        headers=headers,
        body=body,
        destination=destination_key(url),
        timeout_ms=due.options.timeout_ms,
        secret_values=values + signing_values,
    )
