"""Strict JSON for records read from topics: bytes in, a value or a reason out (pure).

orjson alone is lenient in two ways that matter for input from foreign producers: a
duplicate key keeps its last value, and an integer beyond 64 bits silently becomes a float.
Both are refused here, as are what orjson refuses (not UTF-8, not JSON, infinities such as
`1e400`, nesting over 1,024 levels) and what could not be written again (nesting over 255
levels, orjson's limit when serialising), and strings longer than a field may be.

Cost: records already in orjson's canonical form (everything Flowhook itself writes) pass
with one `loads` and one `dumps` (about 2 µs); only other records take the exact path
through the standard library's parser with hooks (about 10-20 µs for a typical event).
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from processor import constants as c

__all__ = ["NotUsable", "loads"]

INT64_MIN: Final = -(2**63)
UINT64_MAX: Final = 2**64 - 1


class NotUsable(ValueError):
    """A record that cannot be used; the message is the reason (short, names no value)."""


def loads(
    value: bytes | None,
    *,
    max_bytes: int = c.MAX_INPUT_RECORD_BYTES,
    max_string_bytes: int | None = c.MAX_INPUT_STRING_BYTES,
) -> Any:
    """The JSON value of a record, or raises NotUsable with the reason."""
    if value is None:
        raise NotUsable("empty record (no value)")
    if len(value) > max_bytes:
        raise NotUsable(f"oversized: {len(value)} bytes, the limit is {max_bytes}")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise NotUsable(f"not JSON: {exc}") from None
    try:
        canonical = orjson.dumps(parsed) == value
    except orjson.JSONEncodeError:
        raise NotUsable("not JSON Flowhook can use: nested deeper than 255 levels") from None
    if not canonical:
        _exact_check(value)
    if max_string_bytes is not None and len(value) > max_string_bytes:  # else no string can be
        _check_strings(parsed, max_string_bytes)
    return parsed


def _exact_check(value: bytes) -> None:
    """What orjson lets through: duplicate keys, integers beyond 64 bits."""
    try:
        json.loads(value, object_pairs_hook=_unique_keys, parse_int=_int64)
    except NotUsable:
        raise
    except RecursionError:
        raise NotUsable("not JSON Flowhook can use: nested too deep") from None
    except ValueError as exc:  # orjson accepted it, so this is a difference of the parsers
        raise NotUsable(f"not JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise NotUsable(f"not JSON Flowhook can use: duplicate key {duplicate[:80]!r}")
    return result


def _int64(text: str) -> int:
    number = int(text)
    if not INT64_MIN <= number <= UINT64_MAX:
        raise NotUsable(f"not JSON Flowhook can use: integer {text[:24]}… does not fit in 64 bits")
    return number


def _check_strings(node: Any, limit: int) -> None:
    """Refuse any string (key or value) longer than `limit` bytes, naming its field."""
    stack: list[tuple[Any, str]] = [(node, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if len(item) > limit // 4 and len(item.encode()) > limit:
                raise NotUsable(
                    f"field {where or '(top)'}: a string of {len(item.encode())} bytes, the limit is {limit}"
                )
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
            stack.extend((k, f"{where}.<key>") for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
