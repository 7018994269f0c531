"""`flows apply` and `flows list`: flow records on the compacted flows topic.

A flow record is `{"id", "version", "definition", "applied_at", "source"}` keyed by flow id
(docs/internals.md). `apply` reads the current records first and bumps a flow's version
only when its definition changed, so applying the same files twice publishes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from processor import records
from processor.clock import iso, now_ms
from processor.durations import format_duration_ms
from processor.flows.delays import describe
from processor.flows.loader import CheckedFile
from processor.flows.model import DelayStep, Flow, SplitStep, Step, Trigger
from processor.kafka import ensure_topics, make_producer, read_records
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

READ_IDLE_S = 1.0
ChangeKind = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Change:
    """What `apply` does with one flow."""

    flow_id: str
    kind: ChangeKind
    version: int
    source: str
    record: dict[str, Any]


def normalise(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The definition as JSON data (what a record carries and what versions are compared on)."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(definition, option=orjson.OPT_NON_STR_KEYS))
    return data


def plan(files: Iterable[CheckedFile], current: Mapping[str, dict[str, Any]], *,
         at_ms: int | None = None) -> list[Change]:
    """One Change per file: a new version only when the definition differs from the current one."""
    applied_at = iso(at_ms if at_ms is not None else now_ms())
    changes = []
    for checked in files:
        if checked.flow is None or checked.definition is None:
            raise ValueError(f"{checked.path} has problems; check it before planning")
        definition = normalise(checked.definition)
        flow_id = checked.flow.id
        existing = current.get(flow_id)
        if existing is not None and existing.get("definition") == definition:
            kind: ChangeKind = "unchanged"
            version = int(existing.get("version", 1))
        else:
            kind = "created" if existing is None else "updated"
            version = 1 if existing is None else int(existing.get("version", 0)) + 1
        record = records.as_dict(records.FlowRecord(id=flow_id, version=version, definition=definition,
                                                    applied_at=applied_at, source=checked.path))
        changes.append(Change(flow_id, kind, version, checked.path, record))
    return changes


async def current_records(settings: Settings) -> dict[str, dict[str, Any]]:
    """The latest record per flow id on the flows topic (tombstones remove a flow)."""
    topic = settings.topics.flows
    await ensure_topics(settings, [topic])
    latest: dict[str, dict[str, Any]] = {}
    async for message in read_records(settings, topic, idle_s=READ_IDLE_S):
        key = message.key.decode() if message.key else None
        if key is None:
            continue
        if message.value is None:
            latest.pop(key, None)
            continue
        try:
            latest[key] = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            log.warning("flow_record_unreadable", flow_id=key, offset=message.offset)
    return latest


async def apply(settings: Settings, files: list[CheckedFile]) -> list[Change]:
    """Publish every changed flow (files must be checked and free of problems)."""
    changes = plan(files, await current_records(settings))
    todo = [c for c in changes if c.kind != "unchanged"]
    if todo:
        producer = make_producer(settings)
        await producer.start()
        try:
            for change in todo:
                await producer.send_and_wait(settings.topics.flows, orjson.dumps(change.record),
                                             key=change.flow_id.encode())
        finally:
            await producer.stop()
    for change in changes:
        log.info("flow_applied", flow_id=change.flow_id, version=change.version, change=change.kind)
    return changes


async def delete(settings: Settings, flow_id: str) -> bool:
    """Publish a tombstone for `flow_id`; False when no such flow is on the topic."""
    if flow_id not in await current_records(settings):
        return False
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.flows, None, key=flow_id.encode())
    finally:
        await producer.stop()
    log.info("flow_deleted", flow_id=flow_id)
    return True


# --- describing flows (for `flows list`) -----------------------------------------------


def describe_trigger(trigger: Trigger) -> str:
    """'metric Placed Order', 'list newsletter', 'date birthday -3d at 09:00 UTC'."""
    if trigger.kind == "metric":
        text = f"metric {trigger.metric}"
    elif trigger.kind == "list":
        text = f"list {trigger.list_id}"
    elif trigger.kind == "segment":
        text = f"segment {trigger.segment_id}"
    else:
        dp = trigger.date_property
        assert dp is not None
        sign = "-" if dp.offset_ms < 0 else "+"
        offset = f" {sign}{format_duration_ms(abs(dp.offset_ms))}" if dp.offset_ms else ""
        text = f"date {dp.property}{offset} at {dp.at} {dp.timezone}" + (" yearly" if dp.yearly else "")
    count = len(trigger.filters)
    return text + (f" ({count} filter{'s' if count > 1 else ''})" if count else "")


def describe_steps(steps: Iterable[Step]) -> str:
    """'wait 2d → split(1|0) → webhook catalog'."""
    parts = []
    for step in steps:
        if isinstance(step, DelayStep):
            parts.append(describe_delay(step))
        elif isinstance(step, SplitStep):
            parts.append(f"split on {step.on} (then {len(step.then)} | else {len(step.else_)})")
        else:
            parts.append(f"webhook {step.id}")
    return " → ".join(parts)


def describe_delay(step: DelayStep) -> str:
    """'wait 2d' or 'wait until 09:00 Europe/Berlin' (see `processor.flows.delays.describe`)."""
    return describe(step)


def flow_row(record: Mapping[str, Any], flow: Flow | None) -> dict[str, str]:
    """One row of `flows list`."""
    definition = record.get("definition") or {}
    if flow is None:
        return {"id": str(record.get("id")), "name": str(definition.get("name", "")), "status": "invalid",
                "trigger": "", "version": str(record.get("version", "")), "steps": ""}
    return {"id": flow.id, "name": flow.name, "status": flow.status,
            "trigger": describe_trigger(flow.trigger), "version": str(flow.version),
            "steps": describe_steps(flow.steps)}
