"""Every record Flowhook writes is built here, and every schema is loaded here.

The shapes are the msgspec Structs of `processor.records.types` (one per record on every
topic); the builders below return them, `encode` writes any of them, and `as_dict` gives
the plain JSON value where code or a test wants one. The webhook-due record's decoder and
its retry, dead-letter and replay copies are in `processor.records.due`. The schemas in
`schemas/` are generated from the types (`processor.records.schemas`); workers use the
compiled validators on input (events, profile updates) and tests on everything written.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache, lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

import fastjsonschema
import msgspec
import orjson
from msgspec import UNSET

from processor import constants as c
from processor.clock import iso, now_ms
from processor.records.types import (
    Audit,
    DeliveryResult,
    Event,
    FlowRecord,
    InvalidInput,
    LastAttempt,
    Options,
    Outcome,
    ProfileUpdate,
    Request,
    RunResult,
    WakeUp,
    WebhookDue,
)
from processor.resources import shipped_dir

__all__ = [
    "TERMINAL_OUTCOMES", "Audit", "DeliveryResult", "Event", "FlowRecord", "InvalidInput", "LastAttempt",
    "Options", "Outcome", "ProfileUpdate", "Request", "RunResult", "SchemaName", "WakeUp", "WebhookDue",
    "as_dict", "delivery_id", "delivery_result", "destination", "encode", "excerpt", "invalid_copy",
    "invalid_input", "run_id", "run_result", "schema", "validation_error",
]

SchemaName = Literal["event", "profile", "flow", "flow-record", "webhook", "wakeup", "result", "invalid",
                     "audit"]
# `cancelled`: a held delivery someone cancelled from the Needs-Review queue (processor.dispatch.held).
TERMINAL_OUTCOMES = frozenset({"delivered", "failed", "dead", "blocked", "held", "invalid", "cancelled"})


# One encoder for every record type: it writes the fields in their declared order and
# leaves out the UNSET ones (see processor.records.types).
encode = msgspec.json.Encoder().encode


def as_dict(record: msgspec.Struct) -> dict[str, Any]:
    """The record's JSON value as plain dicts and lists (what `encode` would write)."""
    value: dict[str, Any] = msgspec.to_builtins(record)
    return value


@cache
def schema(name: SchemaName) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((shipped_dir("schemas") / f"{name}.schema.json").read_bytes())
    return loaded


@cache
def _validator(name: SchemaName) -> Any:
    return fastjsonschema.compile(schema(name), formats={"date-time": r"^\d{4}-\d\d-\d\d"})


def validation_error(name: SchemaName, value: Any) -> str | None:
    """None when `value` matches the schema, else a one-line reason naming the field."""
    try:
        _validator(name)(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return exc.message
    return None


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def run_id(flow_id: str, profile_id: str, event_id: str) -> str:
    """Derived, so a replayed trigger event yields the same run id (and no second run)."""
    return "run_" + _short_hash(flow_id, profile_id, event_id)


def delivery_id(flow_id: str, run_id_: str, step_id: str) -> str:
    """Derived, so a re-emitted webhook step keeps its webhook-id."""
    return "dlv_" + _short_hash(flow_id, run_id_, step_id)


def destination(url: str) -> str:
    """Scheme, host, port and path only: no query string, fragment or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def delivery_result(
    due: WebhookDue,
    *,
    outcome: Outcome,
    attempt: int | None = None,
    http_status: int | None = None,
    latency_ms: float | None = None,
    error: str | None = None,
    response_excerpt: str | None = None,
    sent_at_ms: int | None = None,
    finished_at_ms: int | None = None,
    next_attempt_at_ms: int | None = None,
    deferred: bool = False,
) -> DeliveryResult:
    """The `delivery` result record for one attempt outcome of a webhook-due record."""
    # Built once per delivery on the dispatcher's hot path: the destination is cached per URL
    # and the times go through `_iso_ms`, which formats each second only once.
    return DeliveryResult(
        delivery_id=due.delivery_id,
        flow_id=due.flow_id,
        flow_version=due.flow_version,
        step_id=due.step_id,
        run_id=due.run_id,
        profile_id=due.profile_id,
        event_id=due.event_id,
        metric=due.metric,
        destination=_cached_destination(due.request.url),
        attempt=attempt if attempt is not None else due.attempt,
        outcome=outcome,
        http_status=http_status,
        latency_ms=None if latency_ms is None else round(latency_ms, 3),
        error=None if error is None else error[:500],
        response_excerpt=excerpt(response_excerpt),
        due_at=due.due_at,
        sent_at=_iso_ms(sent_at_ms) if sent_at_ms is not None else None,
        finished_at=_iso_ms(finished_at_ms if finished_at_ms is not None else now_ms()),
        next_attempt_at=_iso_ms(next_attempt_at_ms) if next_attempt_at_ms is not None else None,
        deferred=True if deferred else UNSET,
    )


_cached_destination = lru_cache(maxsize=4096)(destination)
_second_prefix: dict[int, str] = {}
# Below 2100-01-01 the float division in `clock.iso` still rounds to the exact millisecond
# (checked in tests); later times take the slow path, so the text is the same either way.
_FAST_ISO_BELOW = 4_102_444_800_000


def _iso_ms(ms: int) -> str:
    """`clock.iso(ms)`, with the text up to the second formatted once per second."""
    if type(ms) is not int or not 0 <= ms < _FAST_ISO_BELOW:
        return iso(ms)
    second, millis = divmod(ms, 1000)
    prefix = _second_prefix.get(second)
    if prefix is None:
        if len(_second_prefix) > 64:  # only recent seconds are asked for again
            _second_prefix.clear()
        prefix = _second_prefix[second] = iso(second * 1000)[:-5]  # drop ".000Z"
    return f"{prefix}.{millis:03d}Z"


def excerpt(text: str | None) -> str | None:
    """At most RESPONSE_EXCERPT_BYTES of a response text, cut on a character boundary."""
    if text is None:
        return None
    data = text.encode()[: c.RESPONSE_EXCERPT_BYTES]
    return data.decode(errors="ignore")


def run_result(
    *,
    run_id_: str,
    flow_id: str,
    flow_version: int,
    profile_id: str,
    event_id: str,
    status: Literal["entered", "exited", "completed"],
    at_ms: int,
    reason: str | None = None,
) -> RunResult:
    """The `run` result record for one lifecycle change of a run."""
    return RunResult(run_id=run_id_, flow_id=flow_id, flow_version=flow_version, profile_id=profile_id,
                     event_id=event_id, status=status, reason=reason, at=iso(at_ms))


def invalid_input(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    seen_at_ms: int | None = None,
) -> InvalidInput:
    """A copy of an unusable input record with the reason; nothing is dropped silently.

    Key and value are kept as base64 up to INVALID_COPY_KEY_BYTES / INVALID_COPY_VALUE_BYTES:
    a longer one is shortened (`truncated`), so the copy always fits on the topic where the
    original (over a size limit, say) did not; the original's size and SHA-256 are kept so it
    can still be recognised.
    """
    copy_key, key_cut = _kept(key, c.INVALID_COPY_KEY_BYTES)
    copy_value, value_cut = _kept(value, c.INVALID_COPY_VALUE_BYTES)
    return InvalidInput(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=copy_key,
        value_b64=copy_value,
        reason=reason[:1000],
        seen_at=iso(seen_at_ms if seen_at_ms is not None else now_ms()),
        key_size=None if key is None else len(key),
        value_size=None if value is None else len(value),
        value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
        truncated=key_cut or value_cut,
    )


def _kept(data: bytes | None, limit: int) -> tuple[str | None, bool]:
    """(base64 of at most `limit` bytes of data, whether it was shortened)."""
    if data is None:
        return None, False
    return base64.b64encode(data[:limit]).decode(), len(data) > limit


def invalid_copy(message: Any, reason: str) -> InvalidInput:
    """`invalid_input` for a consumed record (anything with topic, partition, offset, key, value)."""
    return invalid_input(source_topic=message.topic, partition=message.partition, offset=message.offset,
                         key=message.key, value=message.value, reason=reason)
