"""Delivery rules of SPEC.md section 3, through the real broker and real loopback receivers.

One dispatcher run (burst mode) handles a mix of records, one per rule; each test then
checks its rule on what the receivers saw and what landed on the results and dead-letter
topics.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

import processor
from processor.clock import parse_iso_ms
from processor.devtools.broker import EmbeddedBroker
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.settings import Settings
from tests.dispatch_helpers import (
    ScriptedReceiver,
    always,
    by_delivery,
    check_results,
    close_then_ok,
    due_record,
    hang_then_ok,
    produce,
    produce_raw,
    read_values,
    status_then_ok,
)

SIGN_A = "whsec_" + base64.b64encode(b"rules-signing-key-a-0123456789").decode()
SIGN_B = "whsec_" + base64.b64encode(b"rules-signing-key-b-0123456789").decode()
TOKEN = "tok-" + uuid.uuid4().hex  # a secret header value that must never reach a topic
SECRETS = {
    "FLOWHOOK_SECRET_RULES_TOKEN": TOKEN,
    "FLOWHOOK_SECRET_RULES_SIGN_A": SIGN_A,
    "FLOWHOOK_SECRET_RULES_SIGN_B": SIGN_B,
}


@dataclass
class Scenario:
    """What one dispatcher run over the mix produced."""

    dues: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> webhook-due record
    main: ScriptedReceiver = field(default_factory=ScriptedReceiver)
    hang: ScriptedReceiver = field(default_factory=ScriptedReceiver)
    closing: ScriptedReceiver = field(default_factory=ScriptedReceiver)
    results: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    invalid_inputs: list[dict[str, Any]] = field(default_factory=list)
    raw_topics: bytes = b""

    def id(self, name: str) -> str:
        return self.dues[name]["delivery_id"]

    def outcomes(self, name: str) -> list[tuple[int, str]]:
        return [(r["attempt"], r["outcome"]) for r in by_delivery(self.results)[self.id(name)]]

    def result(self, name: str, index: int = -1) -> dict[str, Any]:
        return by_delivery(self.results)[self.id(name)][index]


def _mix(s: Scenario) -> dict[str, dict[str, Any]]:
    main = s.main
    quick = [200, 400]
    return {
        "ok": due_record(
            main.url("/ok"),
            body={"order_id": "1001"},
            headers={
                "X-Custom": "yes",
                "webhook-id": "forged",
                "Content-Type": "text/plain",
                "User-Agent": "forged",
            },
            secret_headers={"Authorization": "Bearer {{ secrets.RULES_TOKEN }}"},
            signing_secrets=["RULES_SIGN_A", "RULES_SIGN_B"],
        ),
        "flaky": due_record(main.url("/flaky"), retry_ms=quick),
        "busy": due_record(main.url("/busy"), retry_ms=[100]),
        "bad": due_record(main.url("/bad"), retry_ms=quick),
        "moved": due_record(main.url("/moved"), retry_ms=quick),
        "down": due_record(main.url("/down"), retry_ms=[200, 200]),
        "big": due_record(main.url("/big")),
        "hang": due_record(s.hang.url("/hang"), timeout_ms=500, retry_ms=quick),
        "closing": due_record(s.closing.url("/close"), retry_ms=quick),
        "held": due_record(main.url("/held"), mode="held"),
        "invalid": due_record(main.url("/invalid"), mode="invalid", error="body is not JSON: line 1"),
        "no_secret": due_record(
            main.url("/no-secret"), secret_headers={"Authorization": "Bearer {{ secrets.RULES_MISSING }}"},
            max_age_ms=8_000,  # the first wait (5 s) fits, the second (10 s) does not
        ),
        "ipv6_loopback": due_record(f"http://[::1]:{main.port}/v6"),
    }


async def _run(s: Scenario, settings: Settings) -> None:
    s.main.behaviours = {
        "/flaky": status_then_ok(503),
        "/busy": status_then_ok(429, headers={"Retry-After": "1"}),
        "/bad": always(400, body=b'{"error": "bad request"}'),
        "/moved": always(302, headers={"Location": "/ok"}),
        "/down": always(503),
        "/big": always(200, body=b"x" * 200_000),
    }
    s.hang.behaviours = {"/hang": hang_then_ok(hang_s=10)}
    s.closing.behaviours = {"/close": close_then_ok()}
    for receiver in (s.main, s.hang, s.closing):
        await receiver.start()
    try:
        s.dues = _mix(s)
        await produce(settings, list(s.dues.values()))
        await produce_raw(settings, settings.topics.webhooks, [b"not json at all", b'{"delivery_id": 1}'])
        # A high breaker threshold: these destinations fail on purpose and share a host.
        options = DispatcherOptions(
            concurrency=16, per_destination=8, drain_idle_s=1.5, breaker_threshold=100
        )
        await asyncio.wait_for(run_dispatcher(settings, options=options), timeout=60)
    finally:
        for receiver in (s.main, s.hang, s.closing):
            await receiver.stop()
    s.results = await read_values(settings, settings.topics.results)
    s.dead_letters = await read_values(settings, settings.topics.dead_letter, idle_s=0.5)
    s.invalid_inputs = await read_values(settings, settings.topics.events_invalid, idle_s=0.5)
    s.raw_topics = b"".join(orjson.dumps(v) for v in s.results + s.dead_letters)


@pytest.fixture(scope="module")
def scenario(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Run the dispatcher once over the mix of records."""
    settings = Settings(
        brokers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=2,
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allow_http=True,
        data_dir=tmp_path_factory.mktemp("rules"),
        store="memory",
        session_timeout_ms=3_000,
        heartbeat_interval_ms=300,
        rebalance_timeout_ms=3_000,
    )
    s = Scenario()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        asyncio.run(_run(s, settings))
    yield s


def test_every_result_matches_the_schema(scenario: Scenario) -> None:
    """Every result record validates, and every due record ends in a terminal outcome."""
    check_results(scenario.results)
    terminal = {"delivered", "failed", "dead", "blocked", "held", "invalid"}
    for name in scenario.dues:
        assert scenario.result(name)["outcome"] in terminal, name


def test_standard_headers_and_signatures(scenario: Scenario) -> None:
    """Standard Webhooks headers are sent, flow headers cannot override them, both secrets sign."""
    (hit,) = scenario.main.hits_for(scenario.id("ok"))
    headers = {k.lower(): v for k, v in hit.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"flowhook/{processor.__version__}"
    assert headers["webhook-id"] == scenario.id("ok")
    assert headers["x-custom"] == "yes"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SIGN_A, SIGN_B):
        assert Webhook(secret).verify(hit.body, headers) == {"order_id": "1001"}


def test_delivered_result_fields(scenario: Scenario) -> None:
    """A 2xx is `delivered` with status, latency, excerpt and times; the destination has no query."""
    result = scenario.result("ok")
    assert result["outcome"] == "delivered" and result["http_status"] == 200
    assert result["latency_ms"] > 0 and result["sent_at"] and result["finished_at"]
    assert result["response_excerpt"] == '{"ok": true}'
    assert result["destination"] == scenario.main.url("/ok")


def test_secrets_never_reach_a_topic(scenario: Scenario) -> None:
    """No secret value appears on the results or dead-letter topics."""
    for value in SECRETS.values():
        assert value.encode() not in scenario.raw_topics


def test_503_then_200_is_retried_with_the_same_webhook_id(scenario: Scenario) -> None:
    """A 503 schedules a retry at the flow's first delay; the retry delivers with the same id."""
    assert scenario.outcomes("flaky") == [(1, "retry_scheduled"), (2, "delivered")]
    first, second = scenario.main.hits_for(scenario.id("flaky"))
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    # Due at its own delay (200 ms), not at the 1 s nominal delay of its tier, and not sent
    # before that. (How soon after it the retry lane sends is speed, for `flowhook bench`.)
    scheduled = scenario.result("flaky", 0)
    due_at_ms = parse_iso_ms(scheduled["next_attempt_at"])
    assert due_at_ms - parse_iso_ms(scheduled["finished_at"]) == 200
    assert parse_iso_ms(scenario.result("flaky", -1)["sent_at"]) >= due_at_ms
    assert second.at - first.at >= 0.2


def test_429_honours_retry_after(scenario: Scenario) -> None:
    """A 429 with Retry-After: 1 waits at least a second although the flow's delay is 100 ms."""
    assert scenario.outcomes("busy") == [(1, "retry_scheduled"), (2, "delivered")]
    first, second = scenario.main.hits_for(scenario.id("busy"))
    assert second.at - first.at >= 1.0


def test_400_fails_without_retry(scenario: Scenario) -> None:
    """A 4xx other than 408 and 429 is `failed` after one request."""
    assert scenario.outcomes("bad") == [(1, "failed")]
    assert len(scenario.main.hits_for(scenario.id("bad"))) == 1
    assert scenario.result("bad")["response_excerpt"] == '{"error": "bad request"}'


def test_302_fails_and_is_not_followed(scenario: Scenario) -> None:
    """A redirect is `failed` and its Location is never requested."""
    assert scenario.outcomes("moved") == [(1, "failed")]
    assert [h.path for h in scenario.main.hits_for(scenario.id("moved"))] == ["/moved"]
    assert scenario.result("moved")["http_status"] == 302


def test_retries_exhausted_is_dead_with_a_dead_letter(scenario: Scenario) -> None:
    """After the flow's schedule runs out the outcome is `dead` and a copy goes to the dead-letter topic."""
    assert scenario.outcomes("down") == [(1, "retry_scheduled"), (2, "retry_scheduled"), (3, "dead")]
    assert len(scenario.main.hits_for(scenario.id("down"))) == 3
    (letter,) = [d for d in scenario.dead_letters if d["delivery_id"] == scenario.id("down")]
    assert "retries exhausted" in letter["dead_reason"] and letter["attempt"] == 3


def test_large_response_is_cut(scenario: Scenario) -> None:
    """A large response still delivers; the excerpt is at most 1 KiB."""
    result = scenario.result("big")
    assert result["outcome"] == "delivered" and len(result["response_excerpt"].encode()) <= 1024


def test_hanging_receiver_times_out_and_is_retried(scenario: Scenario) -> None:
    """A receiver that does not answer within timeout_ms is a retryable timeout."""
    assert scenario.outcomes("hang") == [(1, "retry_scheduled"), (2, "delivered")]
    assert "timeout" in scenario.result("hang", 0)["error"]


def test_closed_connection_is_retried(scenario: Scenario) -> None:
    """A receiver that drops the connection without answering is retried."""
    assert scenario.outcomes("closing") == [(1, "retry_scheduled"), (2, "delivered")]
    assert scenario.result("closing", 0)["http_status"] is None


def test_held_and_invalid_send_nothing(scenario: Scenario) -> None:
    """Held records become `held` and invalid ones `invalid` with their error; neither is sent."""
    assert scenario.outcomes("held") == [(1, "held")]
    assert scenario.outcomes("invalid") == [(1, "invalid")]
    assert scenario.result("invalid")["error"] == "body is not JSON: line 1"
    assert not [h for h in scenario.main.hits if h.path in ("/held", "/invalid")]


def test_missing_secret_waits_until_max_age_naming_it(scenario: Scenario) -> None:
    """A missing secret defers the delivery (no attempt, nothing sent) until max_age ends it as
    `dead`; both records name the secret."""
    assert scenario.outcomes("no_secret") == [(1, "retry_scheduled"), (1, "dead")]
    waiting, dead = scenario.result("no_secret", 0), scenario.result("no_secret", 1)
    assert waiting["deferred"] is True and "secret RULES_MISSING is not set" in waiting["error"]
    assert "secret RULES_MISSING is not set" in dead["error"] and dead["http_status"] is None
    assert not scenario.main.hits_for(scenario.id("no_secret"))


def test_address_outside_allowed_networks_is_blocked(scenario: Scenario) -> None:
    """::1 is loopback and not in the allowed 127.0.0.0/8, so it is `blocked` without a request."""
    result = scenario.result("ipv6_loopback")
    assert result["outcome"] == "blocked" and result["sent_at"] is None
    assert "loopback" in result["error"]
    assert not scenario.main.hits_for(scenario.id("ipv6_loopback"))


def test_unusable_records_are_copied_to_the_invalid_topic(scenario: Scenario) -> None:
    """A record that is not JSON or not a webhook-due record is copied aside with a reason; no crash."""
    reasons = sorted(r["reason"].split(":")[0] for r in scenario.invalid_inputs)
    assert reasons == ["not JSON", "not a webhook-due record"]
    assert {base64.b64decode(r["value_b64"]) for r in scenario.invalid_inputs} == {
        b"not json at all",
        b'{"delivery_id": 1}',
    }
