"""One attempt: request preparation, the policy resolver, and outcome decisions."""

from __future__ import annotations

import ipaddress
import random

import orjson
import pytest
from msgspec.structs import replace

from processor.devtools.broker import free_port
from processor.dispatch.attempt import Attempt
from processor.dispatch.delivery import make_session, send
from processor.dispatch.destination import destination_key
from processor.dispatch.outcomes import after_attempt, expired
from processor.dispatch.request import RequestRefused, prepare
from processor.dispatch.retry_policy import FailureKind
from processor.settings import Topics
from tests.dispatch_helpers import ScriptedReceiver, typed_due

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
TOPICS = Topics("x.")


def test_https_only_unless_allowed() -> None:
    """An http URL is `blocked` unless the operator allows http."""
    due = typed_due("http://example.com/hook")
    with pytest.raises(RequestRefused) as refused:
        prepare(due, allow_http=False)
    assert refused.value.attempt.failure is FailureKind.BLOCKED
    assert "https only" in (refused.value.attempt.error or "")
    assert prepare(due, allow_http=True).destination == "example.com:80"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/hook",
        "https://[::ffff:169.254.169.254]/x",
        "https://[64:ff9b::a9fe:a9fe]/x",
        "https://100.64.1.1/x",
        "https://0.0.0.0/x",
    ],
)
def test_ip_literal_destinations_are_blocked_before_sending(url: str) -> None:
    """Private, metadata, CGNAT and embedded forms are refused in `prepare`: no connection is tried."""
    with pytest.raises(RequestRefused) as refused:
        prepare(typed_due(url), allow_http=False, allow_networks=LOOPBACK)
    assert refused.value.attempt.failure is FailureKind.BLOCKED


def test_reserved_headers_cannot_be_overridden() -> None:
    """Flow and secret headers named like a standard header are dropped; ours are sent."""
    due = typed_due(
        "https://example.com/h",
        headers={"webhook-id": "x", "User-Agent": "y", "X-Ok": "1"},
        secret_headers={"webhook-signature": "{{ secrets.S }}", "X-Key": "k={{ secrets.S }}"},
    )
    prepared = prepare(due, allow_http=False, env={"FLOWHOOK_SECRET_S": "sv"})
    assert prepared.headers["webhook-id"] == due.delivery_id
    assert prepared.headers["User-Agent"].startswith("flowhook/")
    assert prepared.headers["X-Ok"] == "1" and prepared.headers["X-Key"] == "k=sv"
    assert "webhook-signature" not in prepared.headers  # no signing secret configured
    assert "sv" not in repr(prepared)


def test_bad_signing_secret_is_invalid() -> None:
    """A signing secret that is not whsec_<base64> is `invalid`, naming no value."""
    due = typed_due("https://example.com/h", signing_secrets=["S"])
    with pytest.raises(RequestRefused) as refused:
        prepare(due, allow_http=False, env={"FLOWHOOK_SECRET_S": "plain text!"})
    assert refused.value.attempt.failure is FailureKind.INVALID
    assert "plain text" not in (refused.value.attempt.error or "")


def test_destination_key_has_default_ports() -> None:
    """Breakers and limits are per host:port, with the scheme's default port."""
    assert destination_key("https://a.example/x?y=1") == "a.example:443"
    assert destination_key("http://a.example:8080/x") == "a.example:8080"


async def test_resolver_blocks_names_resolving_to_refused_addresses() -> None:
    """A host name is judged by its resolved address: localhost without an allowed network is blocked."""
    receiver = await ScriptedReceiver().start()
    try:
        async with make_session(allow_networks=(), concurrency=4, per_destination=2) as session:
            prepared = prepare(typed_due(f"http://localhost:{receiver.port}/x"), allow_http=True)
            attempt = await send(session, prepared)
        assert attempt.failure is FailureKind.BLOCKED and "loopback" in (attempt.error or "")
        assert receiver.hits == []
        async with make_session(allow_networks=LOOPBACK, concurrency=4, per_destination=2) as session:
            attempt = await send(session, prepared)
        assert attempt.delivered and len(receiver.hits) == 1
    finally:
        await receiver.stop()


async def test_connection_refused_is_a_retryable_connect_error() -> None:
    """Nothing listening is a connect error, which is retried."""
    async with make_session(allow_networks=LOOPBACK, concurrency=4, per_destination=2) as session:
        attempt = await send(
            session,
            prepare(typed_due(f"http://127.0.0.1:{free_port()}/"), allow_http=True, allow_networks=LOOPBACK),
        )
    assert attempt.failure is FailureKind.CONNECT_ERROR and attempt.failure.retryable


def test_a_retryable_failure_goes_to_the_smallest_fitting_tier() -> None:
    """A retryable failure produces a retry_scheduled result and a copy on its tier with attempt+1."""
    due = typed_due("https://example.com/h", retry_ms=[2_000])
    attempt = Attempt(FailureKind.CONNECT_ERROR, error="connect_error: refused", finished_at_ms=10_000)
    result, retry = after_attempt(TOPICS, due, attempt, random.Random(1))
    assert orjson.loads(result.value)["outcome"] == "retry_scheduled"
    assert retry.topic == TOPICS.retry_tier(1_000)
    again = orjson.loads(retry.value)
    assert again["attempt"] == 2 and again["delivery_id"] == due.delivery_id
    assert again["not_before"] == "1970-01-01T00:00:12.000Z"
    assert again["last_attempt"]["error"] == "connect_error: refused"


def test_max_age_counts_from_first_attempt() -> None:
    """A retry that would fall after first_attempt_at + max_age is `dead` instead."""
    due = typed_due("https://example.com/h", retry_ms=[1_000, 1_000], max_age_ms=1_500, attempt=2)
    due = replace(due, first_attempt_at="1970-01-01T00:00:09.000Z")
    attempt = Attempt(
        FailureKind.SERVER_ERROR,
        http_status=503,
        error="server_error: HTTP 503",
        sent_at_ms=10_000,
        finished_at_ms=10_000,
    )
    result, letter = after_attempt(TOPICS, due, attempt)
    assert orjson.loads(result.value)["outcome"] == "dead"
    assert letter.topic == TOPICS.dead_letter and "max_age" in orjson.loads(letter.value)["dead_reason"]


def test_a_retry_past_max_age_is_dead_without_a_request() -> None:
    """A retry that waited past first_attempt_at + max_age becomes `dead` without being sent."""
    due = typed_due("https://example.com/h", retry_ms=[1_000], max_age_ms=60_000, attempt=2)
    due = replace(due, first_attempt_at="1970-01-01T00:00:00.000Z")
    result, letter = expired(TOPICS, due, now=60_001) or []
    value = orjson.loads(result.value)
    assert value["outcome"] == "dead" and value["sent_at"] is None and "max_age" in value["error"]
    assert letter.topic == TOPICS.dead_letter
    assert expired(TOPICS, due, now=59_999) is None


async def test_response_excerpt_never_carries_a_secret() -> None:
    """A receiver echoing our Authorization header does not get the secret into the excerpt."""
    from aiohttp import web

    async def echo(request: web.Request, _seen: int) -> web.StreamResponse:
        return web.Response(text=request.headers["Authorization"])

    receiver = await ScriptedReceiver({"/echo": echo}).start()
    due = typed_due(receiver.url("/echo"), secret_headers={"Authorization": "Bearer {{ secrets.T }}"})
    prepared = prepare(due, allow_http=True, allow_networks=LOOPBACK, env={"FLOWHOOK_SECRET_T": "s3cr3t-v"})
    try:
        async with make_session(allow_networks=LOOPBACK, concurrency=2, per_destination=2) as session:
            attempt = await send(session, prepared)
    finally:
        await receiver.stop()
    assert attempt.delivered and attempt.response_excerpt == "Bearer ••••"


async def test_an_endless_response_is_cut_at_64_kib() -> None:
    """A receiver streaming a body without end still gives a quick `delivered`: at most 64 KiB is read."""
    from aiohttp import web

    async def endless(request: web.Request, _seen: int) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:  # the dispatcher must stop reading; the test server is torn down after
            await response.write(b"x" * 8192)

    receiver = await ScriptedReceiver({"/endless": endless}).start()
    due = typed_due(receiver.url("/endless"), timeout_ms=5_000)
    try:
        async with make_session(allow_networks=LOOPBACK, concurrency=2, per_destination=2) as session:
            attempt = await send(session, prepare(due, allow_http=True, allow_networks=LOOPBACK))
    finally:
        await receiver.stop()
    assert attempt.delivered and attempt.http_status == 200
    assert attempt.response_excerpt == "x" * 1024


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("https://example.com:99999/x", {}),
        ("https://exa mple.com/x", {}),
        ("https://example.com/x", {"X-Bad": "line\r\nInjected: yes"}),
        ("https://example.com/x", {"Bad Name": "v"}),
    ],
)
def test_malformed_requests_are_invalid_not_crashes(url: str, headers: dict[str, str]) -> None:
    """A bad port, host, header value or header name makes the delivery `invalid` before sending."""
    with pytest.raises(RequestRefused) as refused:
        prepare(typed_due(url, headers=headers), allow_http=False)
    assert refused.value.attempt.failure is FailureKind.INVALID


async def test_standard_headers_are_sent_once_whatever_case_a_flow_uses() -> None:
    """The session adds no User-Agent or Content-Type of its own next to ours."""
    from aiohttp import web

    seen: dict[str, list[str]] = {}

    async def record(request: web.Request, _seen: int) -> web.StreamResponse:
        for name in ("User-Agent", "Content-Type", "webhook-id"):
            seen[name] = request.headers.getall(name, [])
        return web.json_response({"ok": True})

    receiver = await ScriptedReceiver({"/h": record}).start()
    due = typed_due(receiver.url("/h"), headers={"user-agent": "forged", "CONTENT-TYPE": "text/plain"})
    prepared = prepare(due, allow_http=True, allow_networks=LOOPBACK)
    try:
        async with make_session(allow_networks=LOOPBACK, concurrency=2, per_destination=2) as session:
            attempt = await send(session, prepared)
    finally:
        await receiver.stop()
    assert attempt.delivered
    assert seen["User-Agent"] == [prepared.headers["User-Agent"]]
    assert seen["User-Agent"][0].startswith("flowhook/")
    assert seen["Content-Type"] == ["application/json"]
    assert seen["webhook-id"] == [due.delivery_id]
