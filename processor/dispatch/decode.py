"""The decode stage: a fetched webhook-due record's bytes -> the record, or why it is unusable.

Also where a decoded record goes next: when a retry may be sent (`not_before_ms`) and which
destination queue it joins (`destination_of`). No Kafka client here: a record is anything
with a `value` (aiokafka's ConsumerRecord in the worker, a plain object in tests).
"""

from __future__ import annotations

from typing import Any, Protocol

from processor import records, strict_json
from processor.clock import now_ms, parse_iso_ms
from processor.dispatch.destination import destination_key
from processor.dispatch.due_check import implausible, looks_usable

__all__ = ["Fetched", "decode", "destination_of", "not_before_ms"]


class Fetched(Protocol):
    """What the decode stage needs of a fetched record."""

    value: bytes | None


def decode(record: Fetched) -> tuple[dict[str, Any] | None, str | None]:
    """(webhook-due record, None) or (None, why it cannot be used)."""
    try:
        # No limit on string length: a webhook-due record's body is one long string.
        due = strict_json.loads(record.value, max_string_bytes=None)
    except strict_json.NotUsable as exc:
        return None, str(exc)
    if looks_usable(due):  # the hot path: a cheap check instead of the full schema validator
        absurd = implausible(due, now_ms())
        return (due, None) if absurd is None else (None, f"not a usable webhook-due record: {absurd}")
    # Only for a record the cheap check refuses: the schema's reason, or the check's own.
    error = records.validation_error("webhook", due) or "an id is not exactly of its pattern"
    return None, f"not a webhook-due record: {error}"


def not_before_ms(due: dict[str, Any] | None) -> int:
    """When a retry may be sent (0: now)."""
    if not due or not due.get("not_before"):
        return 0
    try:
        return parse_iso_ms(due["not_before"])
    except ValueError:
        return 0


def destination_of(due: dict[str, Any] | None) -> str | None:
    """The queue of a record: its destination (host:port), or None when nothing is sent."""
    if due is None or due["mode"] != "send":
        return None
    try:
        return destination_key(due["request"]["url"])
    except ValueError:  # prepare() refuses it with the reason
        return None
