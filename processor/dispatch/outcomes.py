"""From a webhook-due record and what its attempt came to, to the records to produce.

Everything here is synchronous and free of Kafka and HTTP, so the decisions (delivered,
failed, blocked, held, invalid, retry in which tier, dead) are tested without either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET

from processor import records
from processor.clock import iso, now_ms, parse_iso_ms
from processor.dispatch.attempt import Attempt
from processor.dispatch.retry_policy import Dead, Retry, plan_retry, tier_for
from processor.records.due import dead_copy, deferred_copy, retry_copy
from processor.records.types import LastAttempt, WebhookDue
from processor.settings import Topics

__all__ = ["Output", "after_attempt", "deferred", "expired", "for_mode", "invalid_input", "result_output"]


@dataclass(slots=True)  # not frozen: made once or twice per delivery, and never changed
class Output:
    """One record to produce: topic, key and value bytes."""

    topic: str
    key: bytes | None
    value: bytes
    outcome: str | None = None  # a result record's outcome (counted in the worker's metrics)
    attempt_made: bool = True  # False for the outputs of a deferred try (not an attempt)


def result_output(topics: Topics, due: WebhookDue, outcome: records.Outcome, **fields: Any) -> Output:
    """The result record of one attempt outcome, keyed by delivery id."""
    value = records.delivery_result(due, outcome=outcome, **fields)
    return Output(topics.results, due.delivery_id.encode(), records.encode(value), outcome)


def for_mode(topics: Topics, due: WebhookDue) -> list[Output] | None:
    """The outputs of a record that is not to be sent (held or invalid), else None."""
    mode = due.mode
    if mode == "held":
        # The record waits in the Needs-Review queue (processor.dispatch.held) until someone sends or
        # cancels it; the copy goes first, so a `held` result always has its queued record.
        queued = Output(topics.held, due.delivery_id.encode(), records.encode(due))
        return [queued, result_output(topics, due, "held", error="flow is in manual status: not sent")]
    if mode == "invalid":
        return [result_output(topics, due, "invalid", error=due.error or "invalid request")]
    return None


def expired(topics: Topics, due: WebhookDue, now: int) -> list[Output] | None:
    """A retry whose max_age has passed while it waited is `dead` without another request."""
    first = due.first_attempt_at
    max_age = due.options.max_age_ms
    if not first or now - parse_iso_ms(first) <= max_age:
        return None
    reason = f"max_age of {max_age} ms passed before attempt {due.attempt}"
    return _dead_outputs(topics, due, Dead(reason), {**_last_attempt_fields(due), "finished_at_ms": now})


def _last_attempt_fields(due: WebhookDue) -> dict[str, Any]:
    """Status, error and excerpt of the last real attempt (carried on retry copies), for `dead`."""
    last = due.last_attempt or LastAttempt()
    return {"http_status": _given(last.http_status), "error": _given(last.error),
            "response_excerpt": _given(last.response_excerpt)}


def _given(value: Any) -> Any:
    return None if value is UNSET else value


def deferred(topics: Topics, due: WebhookDue, *, reason: str, wait_ms: int, now: int) -> list[Output]:
    """A try that was not made (circuit open, a secret missing): the same attempt again after
    `wait_ms`, through a retry tier. It spends no retry; only `max_age` (counted from the first
    try, deferred or not) ends it, as `dead` with the last real attempt's status and error.
    The first deferral of a delivery writes a `retry_scheduled` result marked `deferred`, so
    the wait is visible; later ones write none (an outage must not flood the results)."""
    first = due.first_attempt_at or iso(now)
    max_age = due.options.max_age_ms
    not_before = now + wait_ms
    if not_before - parse_iso_ms(first) > max_age:
        fields = {**_last_attempt_fields(due), "finished_at_ms": now}
        fields["error"] = f"{fields['error']}; {reason}" if fields["error"] else reason
        return _dead_outputs(topics, due, Dead(f"max_age of {max_age} ms reached while deferred"), fields)
    again = deferred_copy(due, not_before_ms=not_before, first_attempt_at=first)
    outputs = [Output(topics.retry_tier(tier_for(wait_ms)), due.delivery_id.encode(), records.encode(again),
                      attempt_made=False)]
    if not due.deferrals:
        value = records.delivery_result(due, outcome="retry_scheduled", error=f"deferred: {reason}",
                                        finished_at_ms=now, next_attempt_at_ms=not_before, deferred=True)
        outputs.insert(0, Output(topics.results, due.delivery_id.encode(), records.encode(value),
                                 "retry_scheduled", attempt_made=False))
    return outputs


def _attempt_result(
    topics: Topics, due: WebhookDue, outcome: records.Outcome, attempt: Attempt
) -> Output:
    """`result_output` with the attempt's fields passed directly."""
    value = records.delivery_result(
        due,
        outcome=outcome,
        http_status=attempt.http_status,
        latency_ms=attempt.latency_ms,
        error=attempt.error,
        response_excerpt=attempt.response_excerpt,
        sent_at_ms=attempt.sent_at_ms,
        finished_at_ms=attempt.finished_at_ms,
    )
    return Output(topics.results, due.delivery_id.encode(), records.encode(value), outcome)


def _attempt_fields(attempt: Attempt) -> dict[str, Any]:
    return {
        "http_status": attempt.http_status,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
        "sent_at_ms": attempt.sent_at_ms,
        "finished_at_ms": attempt.finished_at_ms,
    }


def after_attempt(
    topics: Topics, due: WebhookDue, attempt: Attempt, rng: random.Random | None = None
) -> list[Output]:
    """The result record, plus the retry-tier or dead-letter copy a retryable failure needs."""
    kind = attempt.failure
    if kind is None:  # the hot path: one result record, built without an intermediate dict
        return [_attempt_result(topics, due, "delivered", attempt)]
    if not kind.retryable:
        return [_attempt_result(topics, due, kind.outcome, attempt)]  # type: ignore[arg-type]
    fields = _attempt_fields(attempt)
    finished = attempt.finished_at_ms or now_ms()
    first = due.first_attempt_at
    first_ms = parse_iso_ms(first) if first else (attempt.sent_at_ms or finished)
    options = due.options
    plan = plan_retry(
        attempt=due.attempt,
        retry_ms=options.retry_ms,
        max_age_ms=options.max_age_ms,
        first_attempt_ms=first_ms,
        now_ms=finished,
        retry_after_ms=attempt.retry_after_ms,
        rng=rng,
    )
    if isinstance(plan, Retry):
        return _retry_outputs(topics, due, plan, first_ms, fields)
    return _dead_outputs(topics, due, plan, fields)


def _retry_outputs(
    topics: Topics, due: WebhookDue, plan: Retry, first_ms: int, fields: dict[str, Any]
) -> list[Output]:
    again = retry_copy(due, not_before_ms=plan.not_before_ms, first_attempt_ms=first_ms,
                       http_status=fields["http_status"], error=fields["error"],
                       response_excerpt=fields["response_excerpt"])
    return [
        result_output(topics, due, "retry_scheduled", next_attempt_at_ms=plan.not_before_ms, **fields),
        Output(topics.retry_tier(plan.tier_delay_ms), due.delivery_id.encode(), records.encode(again)),
    ]


def _dead_outputs(topics: Topics, due: WebhookDue, plan: Dead, fields: dict[str, Any]) -> list[Output]:
    error = f"{fields['error']}; {plan.reason}" if fields["error"] else plan.reason
    return [
        result_output(topics, due, "dead", **{**fields, "error": error}),
        Output(topics.dead_letter, due.delivery_id.encode(), records.encode(dead_copy(due, plan.reason))),
    ]


def invalid_input(topics: Topics, record: Any, reason: str) -> Output:
    """A copy of an unusable webhook-due record on the invalid-input topic."""
    return Output(topics.events_invalid, record.key, records.encode(records.invalid_copy(record, reason)))
