"""The webhook-due record: its typed decoder for the dispatcher and its later copies.

The retry-tier copy, the dead letter, the deferred copy and the replayed first try are all
made here from a `WebhookDue` with `msgspec.structs.replace`, so none of them spells the
record out again.

Decoding keeps the strictness of `processor.strict_json` on every input:
- msgspec itself refuses what is not JSON or not UTF-8 and every type or bound the record
  type states (so a number too big for 64 bits, deep nesting or a string where a number
  belongs never gets through);
- what msgspec alone would accept, a duplicate key (msgspec keeps the last one) and an
  infinity such as `1e400` in `options.rate_limit`, is caught by a guard: when the decoded
  record does not encode back to the same bytes (everything Flowhook writes does), the
  bytes go through `strict_json.loads` as well, which refuses both with its usual reason;
- a record that fails the type is also given to `strict_json` first, so a JSON-level
  reason (not JSON, a duplicate key) keeps precedence over a field's, as before.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET
from msgspec.structs import replace

from processor import constants as c
from processor import strict_json
from processor.clock import iso, parse_iso_ms
from processor.records import encode, excerpt
from processor.records.types import LastAttempt, WebhookDue

__all__ = ["dead_copy", "decode_due", "deferred_copy", "due_from", "fresh_attempt", "implausible",
           "retry_copy"]

# Schema-valid but absurd values that would hold a worker slot or a partition for good: a
# retry tier pauses a partition until its head's not_before, and a request holds one of a
# destination's slots for its whole timeout.
MAX_TIMEOUT_MS: Final = 5 * 60_000  # what `flows validate` allows
MAX_NOT_BEFORE_AHEAD_MS: Final = 7 * 24 * 3_600_000  # far beyond any schedule or Retry-After
MAX_ATTEMPT: Final = 1_000

_decoder: Final = msgspec.json.Decoder(WebhookDue)


def decode_due(value: bytes | None, now_ms: int) -> WebhookDue:
    """The webhook-due record in `value`, or raises strict_json.NotUsable with the reason."""
    if value is None:
        raise strict_json.NotUsable("empty record (no value)")
    if len(value) > c.MAX_INPUT_RECORD_BYTES:
        raise strict_json.NotUsable(f"oversized: {len(value)} bytes, the limit is {c.MAX_INPUT_RECORD_BYTES}")
    try:
        due = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        _strict(value)  # a JSON-level reason comes first
        raise strict_json.NotUsable(f"not a webhook-due record: {exc}") from None
    except (msgspec.DecodeError, ValueError):  # msgspec raises UnicodeDecodeError for some bad UTF-8
        _strict(value)
        raise strict_json.NotUsable("not JSON: msgspec refused it") from None
    if encode(due) != value:  # not as Flowhook writes it: what msgspec lets through is refused here
        _strict(value)
    absurd = implausible(due, now_ms)
    if absurd is not None:
        raise strict_json.NotUsable(f"not a usable webhook-due record: {absurd}")
    return due


def _strict(value: bytes) -> None:
    # No limit on string length: a webhook-due record's body is one long string.
    strict_json.loads(value, max_string_bytes=None)


def due_from(value: dict[str, Any]) -> WebhookDue:
    """A webhook-due record from its JSON value (a record read by a tool), type-checked."""
    return msgspec.convert(value, WebhookDue)


def implausible(due: WebhookDue, now_ms: int) -> str | None:
    """Why a record of the right type still cannot be used (absurd values), or None."""
    if due.options.timeout_ms > MAX_TIMEOUT_MS:
        return f"options.timeout_ms {due.options.timeout_ms} is over {MAX_TIMEOUT_MS}"
    if due.attempt > MAX_ATTEMPT:
        return f"attempt {due.attempt} is over {MAX_ATTEMPT}"
    for name, text in (("not_before", due.not_before), ("first_attempt_at", due.first_attempt_at),
                       ("due_at", due.due_at)):
        if not text:
            continue
        try:
            at = parse_iso_ms(text)
        except (ValueError, OverflowError):
            return f"{name} {text[:40]!r} is not an ISO-8601 time"
        if name == "not_before" and at > now_ms + MAX_NOT_BEFORE_AHEAD_MS:
            return f"not_before {text[:40]!r} is more than 7 days ahead"
    return None


def retry_copy(
    due: WebhookDue, *, not_before_ms: int, first_attempt_ms: int, http_status: int | None, error: str | None,
    response_excerpt: str | None,
) -> WebhookDue:
    """The next attempt, on a retry tier, carrying the last real attempt's status and error."""
    return replace(
        due,
        attempt=due.attempt + 1,
        not_before=iso(not_before_ms),
        first_attempt_at=iso(first_attempt_ms),
        last_attempt=LastAttempt(http_status=http_status, error=error,
                                 response_excerpt=excerpt(response_excerpt)),
    )


def deferred_copy(due: WebhookDue, *, not_before_ms: int, first_attempt_at: str) -> WebhookDue:
    """The same attempt again after a deferred try (spends no retry; counts the deferral)."""
    return replace(due, not_before=iso(not_before_ms), first_attempt_at=first_attempt_at,
                   deferrals=(due.deferrals or 0) + 1)


def dead_copy(due: WebhookDue, reason: str) -> WebhookDue:
    """The dead-letter copy."""
    return replace(due, dead_reason=reason)


def fresh_attempt(dead: WebhookDue, now_ms: int) -> WebhookDue:
    """A dead-letter (or held) record as a new first try, keeping its delivery id (the
    webhook-id). `replayed_at` tells the dispatcher that attempt 1 is meant to be made again
    (see `dispatch.dedupe`): only attempts made since then count for this record."""
    return replace(dead, attempt=1, not_before=None, first_attempt_at=None, replayed_at=iso(now_ms),
                   dead_reason=UNSET, deferrals=UNSET, last_attempt=UNSET)
