"""A batch of input records through the core, with one table write per profile.

Pure (no Kafka): `engine.app` hands over the records Faust buffered, with a way to read the
table; it gets back, in input order, the records to produce, then the new state of every
profile the batch changed, and the profiles' next due times. Handling is record by record
exactly as before (`core.handle` per record, same clock per record, same outbox
positions); only the table writes are coalesced: a profile touched by several records of
the batch is written once, with its final state, after the batch's outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from processor import constants as c
from processor import records
from processor.engine.core import RecordKind, drop_committed, handle
from processor.engine.flowset import FlowSet
from processor.engine.inputs import Refused, decode
from processor.engine.placement import Placement
from processor.engine.state import ProfileState, dumps, loads
from processor.logs import get_logger

log = get_logger(__name__)

# (topic, partition) -> the committed offset (the next one to read), or None
Committed = Callable[[str, int], int | None]


@dataclass(frozen=True)
class Input:
    """One input record as the batch needs it (Faust's message, without Faust)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ref: Any = None  # the caller's handle on the record (the Faust event), passed to `load`


@dataclass
class Produce:
    """A record to produce: `partition` None means by key."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    source: str | None = None  # "topic/partition/offset" of the refused record (invalid copies)


@dataclass
class Write:
    """A profile's final state after the batch: to the table, on the input partition."""

    key: bytes
    partition: int
    value: bytes
    ref: Any  # the last input of this profile (its Faust event: the store picks the partition by it)


@dataclass
class BatchResult:
    produce: list[Produce] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    # (profile id, partition, (due ms, reason) | None) for every profile the batch touched
    due: list[tuple[str, int, tuple[int, str] | None]] = field(default_factory=list)
    handled: int = 0
    # Counts for the worker's metrics, gathered here so the app updates them once per batch.
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, accepted|invalid)
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (flow id, run status)
    webhooks: Counter[tuple[str]] = field(default_factory=Counter)  # (flow id,)


@dataclass
class _Slot:
    """A profile's state while the batch runs."""

    state: ProfileState
    dirty: bool  # the table needs a write at the end of the batch
    touched: bool  # a record of the batch has been handled with this state already
    last: Input


@dataclass(frozen=True)
class Topics:
    """Where a batch's records come from and go to."""

    kinds: dict[str, RecordKind]  # input topic -> record kind
    outputs: dict[str, str]  # output kind ("webhook", "result") -> topic
    invalid: str
    placement: Placement | None = None  # forwarding of records off their home partition


def process_batch(
    inputs: list[Input],
    *,
    topics: Topics,
    flows: FlowSet,
    load: Callable[[bytes, Input], bytes | None],
    clock: Callable[[], int],
    committed: Committed,
) -> BatchResult:
    """Handle `inputs` in order; see the module docstring. Never raises for bad input."""
    result = BatchResult()
    slots: dict[bytes, _Slot] = {}
    for item in inputs:
        _one(item, topics, flows, load, clock, committed, slots, result)
    for key, slot in slots.items():
        if slot.dirty:
            result.writes.append(Write(key, slot.state.partition, dumps(slot.state), slot.last.ref))
        result.due.append((slot.state.profile_id, slot.state.partition, slot.state.next_due()))
    return result


def _one(
    item: Input,
    topics: Topics,
    flows: FlowSet,
    load: Callable[[bytes, Input], bytes | None],
    clock: Callable[[], int],
    committed: Committed,
    slots: dict[bytes, _Slot],
    result: BatchResult,
) -> None:
    kind = topics.kinds[item.topic]
    try:
        record, profile_id = decode(kind, item.value)
    except Refused as exc:
        result.produce.append(_refusal(item, str(exc), topics.invalid))
        result.events[(item.topic, "invalid")] += 1
        return
    if topics.placement is not None:
        forward = topics.placement.forward(item.topic, item.partition, item.value, profile_id)
        if forward is not None:  # handled when it comes back on the profile's home partition
            result.produce.append(Produce(forward.topic, forward.key, item.value or b"", forward.partition))
            return
    key = profile_id.encode()
    slot = slots.get(key) or _load(key, profile_id, item, load, slots)
    # What to go back to if the core fails on this record: the state before it (None: the
    # record is the profile's first in the batch, and the table still holds that state).
    before = dumps(slot.state) if slot.touched else None
    state = slot.state
    state.partition = item.partition
    if state.outbox:
        drop_committed(state, committed)
    src = f"{item.topic}:{item.partition}:{item.offset}"
    try:
        outcome = handle(state, kind, record, flows, clock(), src)
        produced = [
            Produce(topics.outputs[o.kind], o.key.encode(), orjson.dumps(o.value)) for o in outcome.outputs
        ]
        refusal = _too_big(item, produced, state)
    except Exception as exc:  # a record the core cannot handle must not stop the worker
        log.exception("record_failed", topic=item.topic, offset=item.offset)
        refusal = f"engine error: {type(exc).__name__}: {exc}"
    if refusal is not None:
        if before is not None:  # keep the work of the batch's earlier records
            slot.state = loads(before)
        else:  # as if this record had never been read: no write, no due-index update
            del slots[key]
        result.produce.append(_refusal(item, refusal, topics.invalid))
        result.events[(item.topic, "invalid")] += 1
        return
    slot.touched, slot.last = True, item
    slot.dirty = slot.dirty or outcome.changed
    result.produce.extend(produced)
    for output in outcome.outputs:
        _count(output.kind, output.value, result)
    result.events[(item.topic, "accepted")] += 1
    result.handled += 1


def _count(kind: str, value: dict[str, Any], result: BatchResult) -> None:
    if kind == "webhook":
        result.webhooks[(value["flow_id"],)] += 1
    elif value.get("type") == "run":
        result.runs[(value["flow_id"], value["status"])] += 1


def _too_big(item: Input, produced: list[Produce], state: ProfileState) -> str | None:
    """Why the record's outputs or the profile's new state would not fit on Kafka, or None.

    Inputs are bounded (constants.MAX_INPUT_*), so only a large input or large outputs can
    make a large state; the state is serialised here only then."""
    for out in produced:
        if len(out.value) > c.MAX_OUTPUT_RECORD_BYTES:
            return f"output to {out.topic} would be {len(out.value)} bytes, over {c.MAX_OUTPUT_RECORD_BYTES}"
    large = max(len(item.value or b""), sum(len(p.value) for p in produced)) > c.MAX_INPUT_STRING_BYTES
    if large and (size := len(dumps(state))) > c.MAX_OUTPUT_RECORD_BYTES:
        return f"the profile's state would be {size} bytes, over {c.MAX_OUTPUT_RECORD_BYTES}"
    return None


def _load(
    key: bytes, profile_id: str, item: Input, load: Callable[[bytes, Input], bytes | None],
    slots: dict[bytes, _Slot],
) -> _Slot:
    raw = load(key, item)
    state = loads(raw) if raw is not None else ProfileState(profile_id)
    # A profile new to the table is written even when nothing changed (as one by one did).
    slot = _Slot(state, dirty=raw is None, touched=False, last=item)
    slots[key] = slot
    return slot


def _refusal(item: Input, reason: str, topic: str) -> Produce:
    log.warning("input_refused", topic=item.topic, partition=item.partition, offset=item.offset,
                reason=reason[:200])
    source = f"{item.topic}/{item.partition}/{item.offset}"
    return Produce(topic, item.key, records.encode(records.invalid_copy(item, reason)), source=source)
