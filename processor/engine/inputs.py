"""Input records as the engine takes them: bytes in, a checked record or a reason out.

Pure: the app copies every refused record to the invalid-input topic with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

from processor import constants as c
from processor import records, strict_json
from processor.basics import profile_key
from processor.clock import parse_iso_ms
from processor.engine.core import RecordKind

_YEAR_MS = (
    parse_iso_ms(f"{c.EVENT_YEARS[0]}-01-01T00:00:00Z"),
    parse_iso_ms(f"{c.EVENT_YEARS[1] + 1}-01-01T00:00:00Z"),
)


class Refused(Exception):
    """An input record that cannot be used; the message is the reason."""


def decode(kind: RecordKind, value: bytes | None) -> tuple[dict[str, Any], str]:
    """(record, profile id) of an input record, or raises Refused with the reason."""
    try:
        record = strict_json.loads(value)
    except strict_json.NotUsable as exc:
        raise Refused(str(exc)) from None
    if not isinstance(record, dict):
        raise Refused(f"not a JSON object: {type(record).__name__}")
    return record, _check(kind, record)


def _check(kind: RecordKind, record: dict[str, Any]) -> str:
    if kind == "wakeup":
        pid = record.get("profile_id")
        if not isinstance(pid, str) or not pid:
            raise Refused("wake-up without profile_id")
        return pid
    schema: Literal["event", "profile"] = "event" if kind == "event" else "profile"
    problem = records.validation_error(schema, record)
    if problem is not None:
        raise Refused(f"{schema} schema: {problem}")
    if kind == "event":
        _check_time(record["time"])
    pid = profile_key(record["profile"] if kind == "event" else record)
    if pid is None:  # the schema requires id or email; this is a safety net
        raise Refused(f"{schema} schema: needs profile id or email")
    return pid


def _check_time(text: str) -> None:
    try:
        at_ms = parse_iso_ms(text)
    except (ValueError, OverflowError):
        raise Refused(f"event schema: time {text[:40]!r} is not ISO-8601") from None
    first, last = c.EVENT_YEARS
    if not _YEAR_MS[0] <= at_ms < _YEAR_MS[1]:
        raise Refused(f"event schema: time {text[:40]!r} is outside the years {first}-{last}")
