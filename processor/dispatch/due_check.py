"""A cheap structural check of a webhook-due record, for the dispatcher's hot path.

The full JSON-schema validator (fastjsonschema) cost about 7 µs per record, about 3% of
the dispatcher's CPU in a py-spy profile. This hand-written check tests the same things as
`schemas/webhook.schema.json` (required fields, their types and bounds, the id patterns,
the mode and method enums) with dict look-ups, `isinstance` and plain loops, in about 2 µs.
It never accepts a record the schema refuses (tests compare the two on many broken
records); when it refuses one, the caller asks the full validator for the reason, so the
cost of a clear message is only paid for garbage.
"""

from __future__ import annotations

import re
from typing import Any, Final

from processor.clock import parse_iso_ms

__all__ = ["implausible", "looks_usable"]

# Schema-valid but absurd values that would hold a worker slot or a partition for good: a
# retry tier pauses a partition until its head's not_before, and a request holds one of a
# destination's slots for its whole timeout.
MAX_TIMEOUT_MS: Final = 5 * 60_000  # what `flows validate` allows
MAX_NOT_BEFORE_AHEAD_MS: Final = 7 * 24 * 3_600_000  # far beyond any schedule or Retry-After
MAX_ATTEMPT: Final = 1_000

_DELIVERY_ID = re.compile(r"dlv_[0-9a-f]{24}")
_RUN_ID = re.compile(r"run_[0-9a-f]{24}")
_MODES = frozenset({"send", "held", "invalid"})
_METHODS = frozenset({"POST", "PUT", "PATCH"})
_OPTIONAL_STRINGS = ("flow_name", "error", "not_before", "first_attempt_at", "dead_reason", "replayed_at")


def _integer(value: Any, minimum: int) -> bool:
    """JSON-schema `integer` (an integral float counts, a bool does not) with a minimum."""
    if type(value) is int:  # the common case first: orjson gives exact ints
        return value >= minimum
    if isinstance(value, float):
        return value.is_integer() and value >= minimum
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _strings(values: Any) -> bool:
    # A plain loop: all() over a generator costs several times more on this hot path.
    for value in values:  # noqa: SIM110
        if not isinstance(value, str):
            return False
    return True


def _request_ok(request: Any) -> bool:
    if not isinstance(request, dict):
        return False
    try:
        method, url, headers = request["method"], request["url"], request["headers"]
        secret_headers, body, signing = request["secret_headers"], request["body"], request["signing_secrets"]
    except KeyError:
        return False
    return (
        isinstance(method, str)
        and method in _METHODS
        and isinstance(url, str)
        and isinstance(headers, dict)
        and _strings(headers.values())
        and isinstance(secret_headers, dict)
        and _strings(secret_headers.values())
        and (body is None or isinstance(body, str))
        and isinstance(signing, list)
        and _strings(signing)
    )


def _options_ok(options: Any) -> bool:
    if not isinstance(options, dict):
        return False
    try:
        timeout, retry, max_age, rate = (
            options["timeout_ms"], options["retry_ms"], options["max_age_ms"], options["rate_limit"]
        )
    except KeyError:
        return False
    if retry is not None:
        if not isinstance(retry, list):
            return False
        for value in retry:
            if not _integer(value, 0):
                return False
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        return False
    return _integer(timeout, 1) and _integer(max_age, 1)


def _optional_strings(due: dict[str, Any]) -> bool:
    for name in _OPTIONAL_STRINGS:
        value = due.get(name)
        if value is not None and not isinstance(value, str):
            return False
    return isinstance(due.get("created_at", ""), str)


def looks_usable(due: Any) -> bool:
    """True only for a record the webhook-due schema accepts.

    Stricter than the schema in one way only: the ids must match their pattern exactly, where
    the schema's `$` also lets a trailing newline through (a header value cannot carry one).
    """
    if not isinstance(due, dict):
        return False
    try:
        delivery_id, run_id, mode = due["delivery_id"], due["run_id"], due["mode"]
        flow_version, attempt = due["flow_version"], due["attempt"]
        request, options = due["request"], due["options"]
        strings = (due["flow_id"], due["step_id"], due["profile_id"], due["event_id"], due["metric"],
                   due["due_at"])
    except KeyError:
        return False
    return (
        isinstance(delivery_id, str)
        and _DELIVERY_ID.fullmatch(delivery_id) is not None
        and isinstance(run_id, str)
        and _RUN_ID.fullmatch(run_id) is not None
        and isinstance(mode, str)
        and mode in _MODES
        and _strings(strings)
        and _optional_strings(due)
        and _integer(flow_version, 1)
        and _integer(attempt, 1)
        and _request_ok(request)
        and _options_ok(options)
    )


def implausible(due: dict[str, Any], now_ms: int) -> str | None:
    """Why a record that `looks_usable` still cannot be used (absurd values), or None."""
    options = due["options"]
    if options["timeout_ms"] > MAX_TIMEOUT_MS:
        return f"options.timeout_ms {options['timeout_ms']} is over {MAX_TIMEOUT_MS}"
    if due["attempt"] > MAX_ATTEMPT:
        return f"attempt {due['attempt']} is over {MAX_ATTEMPT}"
    for name in ("not_before", "first_attempt_at", "due_at"):
        text = due.get(name)
        if not text:
            continue
        try:
            at = parse_iso_ms(text)
        except (ValueError, OverflowError):
            return f"{name} {text[:40]!r} is not an ISO-8601 time"
        if name == "not_before" and at > now_ms + MAX_NOT_BEFORE_AHEAD_MS:
            return f"not_before {text[:40]!r} is more than 7 days ahead"
    return None
