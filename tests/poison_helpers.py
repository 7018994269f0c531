"""Bad input for every topic a worker reads: the kinds of poison pill, as (name, key, value).

Each builder returns records that a worker must copy to the invalid-input topic and go on
after. The kinds are the same on every topic (size, encoding, null key/value, not JSON,
nesting, numbers, duplicate keys), plus schema-valid but absurd records of that topic.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from processor import constants as c
from processor import records

Pill = tuple[str, bytes | None, bytes | None]  # (kind, key, value)

OVERSIZED_BYTES = c.MAX_INPUT_RECORD_BYTES + 4096
BIG_STRING_BYTES = 900 * 1024


def _with_field(good: dict[str, Any], path: list[str], raw: bytes) -> bytes:
    """`good` as JSON with the value at `path` replaced by raw JSON text `raw`."""
    marker = "\u2603MARK\u2603"
    doc = orjson.loads(orjson.dumps(good))
    node = doc
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = marker
    return orjson.dumps(doc).replace(orjson.dumps(marker), raw)


def generic(good: dict[str, Any], key: bytes, field: list[str]) -> list[Pill]:
    """The kinds every topic gets, built around one good record of that topic."""
    good_bytes = orjson.dumps(good)
    duplicate = good_bytes[:-1] + b"," + good_bytes[1:]  # every key twice, same values
    return [
        ("oversized", key, _with_field(good, field, orjson.dumps("x" * OVERSIZED_BYTES))),
        ("not UTF-8", key, _with_field(good, field, b'"\xff\xfe\xc3"')),
        ("null value", key, None),
        ("null key and garbage", None, b"\x00\x01garbage"),
        ("not JSON", key, b"{this is not json"),
        ("not an object", key, b"[1, 2, 3]"),
        ("10,000-deep nesting", key, b"[" * 10_000 + b"]" * 10_000),
        ("300-deep nesting", key, _with_field(good, field, b"[" * 300 + b"]" * 300)),
        ("1e400", key, _with_field(good, field, b"1e400")),
        ("2**70", key, _with_field(good, field, str(2**70).encode())),
        ("duplicate keys", key, duplicate),
    ]


def event_pills(good: dict[str, Any]) -> list[Pill]:
    """Poison pills for the events topic (and, adapted, the profiles topic)."""
    key = good["profile"]["id"].encode()
    year_9999 = {**good, "time": "9999-12-31T23:59:59Z"}
    big = {**good, "properties": {**good["properties"], "Note": "y" * BIG_STRING_BYTES}}
    return [
        *generic(good, key, ["properties", "OrderId"]),
        ("year 9999", key, orjson.dumps(year_9999)),
        ("900 KiB string", key, orjson.dumps(big)),
        ("schema-invalid", key, orjson.dumps({**good, "metric": 42})),
    ]


def profile_pills(good: dict[str, Any]) -> list[Pill]:
    key = good["id"].encode()
    big = {**good, "properties": {"Note": "y" * BIG_STRING_BYTES}}
    return [
        *generic(good, key, ["first_name"]),
        ("900 KiB string", key, orjson.dumps(big)),
        ("schema-invalid", key, orjson.dumps({"first_name": "no id"})),
    ]


def wakeup_pills(good: dict[str, Any]) -> list[Pill]:
    key = good["profile_id"].encode()
    return [
        *generic(good, key, ["reason"]),
        ("no profile id", key, orjson.dumps({"due_at": good["due_at"], "reason": "delay"})),
    ]


def flow_pills(good_record: dict[str, Any]) -> list[Pill]:
    """Flow records on the flows topic (compacted: each kind gets a key of its own)."""
    pills = generic(good_record, b"bad-flow", ["source"])
    keyed = [(name, f"bad-{i}".encode() if key else key, value) for i, (name, key, value) in enumerate(pills)]
    broken = {**good_record, "definition": {**good_record["definition"], "steps": "not a list"}}
    return [
        # A keyed null is a tombstone, not bad input; a keyless record Kafka refuses itself on a
        # compacted topic (the embedded broker takes it: the registry copies it aside there).
        *[p for p in keyed if p[2] is not None and p[1] is not None],
        ("definition refused", b"bad-definition", orjson.dumps(broken)),
    ]


def due_pills(good: dict[str, Any]) -> list[Pill]:
    """Poison pills for the webhooks topic and the retry tiers."""
    key = good["delivery_id"].encode()
    absurd_wait = {**good, "attempt": 2, "not_before": "9999-12-31T23:59:59Z",
                   "first_attempt_at": good["due_at"]}
    absurd_timeout = {**good, "options": {**good["options"], "timeout_ms": 2**40}}
    return [
        *generic(good, key, ["profile_id"]),
        ("not_before in year 9999", key, orjson.dumps(absurd_wait)),
        ("timeout of 35 years", key, orjson.dumps(absurd_timeout)),
        ("schema-invalid", key, orjson.dumps({**good, "mode": "explode"})),
    ]


# A produced pill and where it landed: (pill, partition, offset)
Placed = tuple[Pill, int, int]


def check_copies(copies: list[dict[str, Any]], placed: list[Placed], topic: str) -> None:
    """One schema-valid copy per pill from `topic`, naming its partition and offset, each with
    the original's size and SHA-256 and as much of its bytes as fits."""
    mine = {(copy["partition"], copy["offset"]): copy for copy in copies if copy["source_topic"] == topic}
    kinds = [pill[0] for pill, *_ in placed]
    assert len(mine) == len(placed), (topic, kinds, [m["reason"][:60] for m in mine.values()])
    for (kind, key, value), partition, offset in placed:
        copy = mine.get((partition, offset))
        assert copy is not None, (topic, kind, "no copy")
        assert records.validation_error("invalid", copy) is None, (kind, copy)
        assert copy["reason"], kind
        if value is None:
            assert copy["value_b64"] is None and copy["value_size"] is None, kind
            continue
        kept = base64.b64decode(copy["value_b64"])
        assert copy["value_size"] == len(value) and copy["value_sha256"] == hashlib.sha256(value).hexdigest()
        assert value.startswith(kept) and len(kept) <= c.INVALID_COPY_VALUE_BYTES, kind
        assert copy["truncated"] == (len(value) > c.INVALID_COPY_VALUE_BYTES), kind
        if key is not None:
            assert base64.b64decode(copy["key_b64"]) == key, kind
