"""Input records as the engine takes them: bytes in, a checked record or a reason out.

Pure: the app copies every refused record to the invalid-input topic with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from processor import constants as c
from processor import records
from processor.clock import parse_iso_ms
from processor.engine.core import RecordKind, profile_key


class Refused(Exception):
    """An input record that cannot be used; the message is the reason."""


def decode(kind: RecordKind, value: bytes | None) -> tuple[dict[str, Any], str]:
    """(record, profile id) of an input record, or raises Refused with the reason."""
    if value is None:
        raise Refused("empty record (no value)")
    if len(value) > c.MAX_INPUT_RECORD_BYTES:
        raise Refused(f"oversized: {len(value)} bytes, the limit is {c.MAX_INPUT_RECORD_BYTES}")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"not JSON: {exc}") from None
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
        parse_iso_ms(text)
    except ValueError:
        raise Refused(f"event schema: time {text!r} is not ISO-8601") from None
