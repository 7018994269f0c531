"""The processor's read-only profile lookup (`GET /profiles/{id}` on the worker endpoint).

Only the worker that owns a profile's partition holds its state, so a lookup answers:
- 200 `{"profile_id", "partition", "profile", "runs"}` when this worker owns the partition;
- 404 `{"error": "not_owned", "partition": N}` when another worker does (the console asks
  each processor in turn);
- 404 `{"error": "unknown_profile"}` when the partition is ours and the profile is not in it;
- 503 `{"error": "recovering", "partition": N}` while the state is being recovered.
Runs are listed as stored: flow id, version, the step it is at, and its wake time.
"""

from __future__ import annotations

from typing import Any, Protocol

from processor.clock import iso
from processor.engine.flowset import END, FlowSet
from processor.engine.state import Run, loads
from processor.partitioner import murmur2

__all__ = ["ProfileSource", "lookup", "partition_of"]


class ProfileSource(Protocol):
    """What a lookup needs from the engine."""

    partitions: int
    flows: FlowSet

    def owned_partitions(self) -> set[int] | None:
        """The input partitions whose state is recovered here; None while recovering."""

    def read_state(self, key: bytes, partition: int) -> bytes | None:
        """The stored state of one profile on one partition of this worker."""


def partition_of(profile_id: str, partitions: int) -> int:
    """The input partition of a profile id: Kafka's default partitioner on the key."""
    return (murmur2(profile_id.encode()) & 0x7FFFFFFF) % partitions


def lookup(source: ProfileSource, profile_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one profile id; see the module docstring."""
    partition = partition_of(profile_id, source.partitions)
    owned = source.owned_partitions()
    if owned is None:
        return 503, {"error": "recovering", "partition": partition}
    if partition not in owned:
        return 404, {"error": "not_owned", "partition": partition}
    raw = source.read_state(profile_id.encode(), partition)
    if raw is None:
        return 404, {"error": "unknown_profile"}
    state = loads(raw)
    runs = [describe_run(run, source.flows) for run in state.runs.values()]
    return 200, {"profile_id": profile_id, "partition": partition, "profile": state.profile, "runs": runs}


def describe_run(run: Run, flows: FlowSet) -> dict[str, Any]:
    """One active run for people: flow, version, step (id and kind), wake time."""
    program = flows.version(run.flow_id, run.version, run.shape)
    step: dict[str, Any] = {"index": run.pc}
    if run.pc == END:
        step["id"] = None
    elif program is not None and 0 <= run.pc < len(program.instructions):
        instruction = program.instructions[run.pc].step
        step.update(id=instruction.id, kind=type(instruction).__name__.removesuffix("Step").lower())
    return {
        "run_id": run.run_id,
        "flow_id": run.flow_id,
        "version": run.version,
        "step": step,
        "wake_at": iso(run.wake_ms) if run.wake_ms is not None else None,
        "started_at": iso(run.start_ms),
        "event_id": run.event.get("id"),
    }
