"""Shared helpers for the engine tests: flow definitions, events, a clock, broker I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from processor.clock import iso, parse_iso_ms
from processor.engine.core import Outcome, handle
from processor.engine.flowset import FlowSet
from processor.engine.state import ProfileState
from processor.flows.loader import flow_from_dict
from processor.flows.model import Flow
from processor.kafka import ensure_topics, make_producer, read_records
from processor.settings import Settings

T0 = parse_iso_ms("2026-11-27T10:00:00Z")
HOOK = "http://127.0.0.1:9/hook"


def flow(flow_id: str = "f", *, version: int = 1, **fields: Any) -> Flow:
    """A validated flow: metric trigger `Placed Order`, one webhook step, unless overridden."""
    return flow_from_dict(definition(flow_id, **fields), source="test", version=version, allow_http=True)


def webhook(step_id: str, **fields: Any) -> dict[str, Any]:
    """A webhook step to a loopback URL with a small templated body."""
    body = {"email": "{{ person.email }}", "order": "{{ event.OrderId }}"}
    return {"webhook": {"id": step_id, "url": HOOK, "body": body, **fields}}


def event(
    event_id: str, metric: str = "Placed Order", *, at_ms: int = T0, pid: str = "p1", **props: Any
) -> dict:
    """An event record for profile `pid` with the given properties."""
    return {
        "id": event_id,
        "metric": metric,
        "time": iso(at_ms),
        "profile": {"id": pid, "email": f"{pid}@example.com"},
        "properties": props,
    }


class Harness:
    """One profile's state driven through the pure core with an injected clock."""

    def __init__(self, *flows: Flow, pid: str = "p1") -> None:
        self.flows = FlowSet(list(flows))
        self.state = ProfileState(pid)
        self.now = T0

    def send(self, kind: str, record: dict[str, Any], src: str | None = None) -> Outcome:
        return handle(self.state, kind, record, self.flows, self.now, src)  # type: ignore[arg-type]

    def event(self, record: dict[str, Any], src: str | None = None) -> Outcome:
        return self.send("event", record, src)

    def profile(self, **fields: Any) -> Outcome:
        return self.send("profile", {"id": self.state.profile_id, **fields})

    def wake(self, at_ms: int) -> Outcome:
        self.now = at_ms
        return self.send(
            "wakeup", {"profile_id": self.state.profile_id, "due_at": iso(at_ms), "reason": "delay"}
        )


def kinds(outcome: Outcome) -> list[str]:
    """Outputs as short labels: 'entered', 'exited', 'completed', 'webhook:<step>:<mode>'."""
    out = []
    for o in outcome.outputs:
        if o.kind == "webhook":
            out.append(f"webhook:{o.value['step_id']}:{o.value['mode']}")
        else:
            out.append(o.value["status"])
    return out


# --- broker I/O ------------------------------------------------------------------------


def flow_record(definition: dict[str, Any], version: int = 1) -> bytes:
    """A flows-topic record value as `flows apply` writes it."""
    return orjson.dumps(
        {
            "id": definition["id"],
            "version": version,
            "definition": definition,
            "applied_at": iso(T0),
            "source": "t",
        }
    )


def definition(flow_id: str, **fields: Any) -> dict[str, Any]:
    """A flow definition as a dict (the shape published on the flows topic)."""
    data: dict[str, Any] = {
        "id": flow_id,
        "name": f"Flow {flow_id}",
        "status": "live",
        "trigger": {"metric": "Placed Order"},
        "steps": [webhook("hook")],
    }
    data.update(fields)
    return data


async def publish_flows(settings: Settings, *definitions: dict[str, Any], version: int = 1) -> None:
    """Create every topic (so no test auto-creates one with the wrong partition count), then
    publish flow definitions to the flows topic."""
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for d in definitions:
            await producer.send_and_wait(settings.topics.flows, flow_record(d, version), key=d["id"].encode())
    finally:
        await producer.stop()


async def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce (key, value) pairs and wait until the broker has them."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def event_bytes(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) for an event record, keyed by its profile id."""
    return record["profile"]["id"].encode(), orjson.dumps(record)


async def read_json(settings: Settings, topic: str, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Every record of `topic` as JSON, read until idle."""
    return [orjson.loads(r.value) async for r in read_records(settings, topic, idle_s=idle_s)]


async def wait_for(
    settings: Settings, topic: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Read `topic` again and again until `done(records)` or the timeout; returns the last read."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = await read_json(settings, topic, idle_s=0.3)
        if done(seen):
            return seen
        await asyncio.sleep(0.3)
    return seen


class InProcessEngine:
    """`run_processor` in this event loop, as the demo runs it; stop() ends it gracefully."""

    def __init__(self, settings: Settings) -> None:
        from processor.engine.app import Engine

        self.engine = Engine(settings)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessEngine:
        self._task = asyncio.create_task(self.engine.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=30)


def processor_worker(settings: Settings, folder: Path, name: str) -> Any:
    """A `flowhook processor` child process with its own data dir and log file (not started)."""
    from processor.devtools.stack import WorkerProcess

    env = {"FLOWHOOK_DATA_DIR": str(folder / name / "data")}
    return WorkerProcess("processor", settings, folder / name / "worker.log", env=env)


def count_by(records_: list[dict[str, Any]], field: str) -> dict[str, int]:
    """How many records carry each value of `field`."""
    counts: dict[str, int] = {}
    for r in records_:
        counts[r[field]] = counts.get(r[field], 0) + 1
    return counts
