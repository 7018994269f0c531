"""The decode stage: a fetched webhook-due record's bytes -> the record, or why it is unusable.

Also where a decoded record goes next: when a retry may be sent (`not_before_ms`) and which
destination queue it joins (`destination_of`). No Kafka client here: a record is anything
with a `value` (aiokafka's ConsumerRecord in the worker, a plain object in tests).
"""

from __future__ import annotations

from typing import Protocol

from processor import strict_json
from processor.clock import now_ms, parse_iso_ms
from processor.dispatch.destination import destination_key
from processor.records.due import decode_due
from processor.records.types import WebhookDue

__all__ = ["Fetched", "decode", "destination_of", "not_before_ms"]


class Fetched(Protocol):
    """What the decode stage needs of a fetched record."""

    value: bytes | None


def decode(record: Fetched) -> tuple[WebhookDue | None, str | None]:
    """(webhook-due record, None) or (None, why it cannot be used)."""
    try:
        return decode_due(record.value, now_ms()), None
    except strict_json.NotUsable as exc:
        return None, str(exc)


def not_before_ms(due: WebhookDue | None) -> int:
    """When a retry may be sent (0: now)."""
    if due is None or not due.not_before:
        return 0
    try:
        return parse_iso_ms(due.not_before)
    except ValueError:
        return 0


def destination_of(due: WebhookDue | None) -> str | None:
    """The queue of a record: its destination (host:port), or None when nothing is sent."""
    if due is None or due.mode != "send":
        return None
    try:
        return destination_key(due.request.url)
    except ValueError:  # prepare() refuses it with the reason
        return None
