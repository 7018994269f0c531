"""The flows a worker knows, indexed for the hot path, each compiled once per version.

Pure: the Kafka consumer that fills it lives in `engine.app`. Older versions stay known
while the worker runs, so a run keeps the version it started with after an edit.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from processor.flows.model import DelayStep, Flow, SplitStep, Step, WebhookStep

END = -1  # the program counter of a finished run


@dataclass(frozen=True)
class Instruction:
    """One step of a compiled flow: where to go next (for splits: `then` and `else`)."""

    step: DelayStep | WebhookStep | SplitStep
    next: int
    else_: int = END


@dataclass(frozen=True)
class Program:
    """A flow's steps flattened into instructions; a run only needs an index into them."""

    flow: Flow
    instructions: tuple[Instruction, ...]
    start: int
    # The steps' kinds, ids and jumps: two versions with the same shape can take over each
    # other's runs (an edit of a URL or body), others cannot.
    shape: str = ""


def compile_flow(flow: Flow) -> Program:
    """Flatten nested splits into jumps; deterministic, so a pinned run's index stays valid."""
    out: list[Instruction] = []

    def emit(steps: tuple[Step, ...], after: int) -> int:
        entry = after
        for step in reversed(steps):
            if isinstance(step, SplitStep):
                then_pc = emit(step.then, entry)
                else_pc = emit(step.else_, entry)
                out.append(Instruction(step, then_pc, else_pc))
            else:
                out.append(Instruction(step, entry))
            entry = len(out) - 1
        return entry

    start = emit(flow.steps, END)
    parts = [f"{type(i.step).__name__}:{i.step.id}:{i.next}:{i.else_}" for i in out]
    shape = hashlib.sha256("|".join([str(start), *parts]).encode()).hexdigest()[:12]
    return Program(flow, tuple(out), start, shape)


class FlowSet:
    """Current flows by id and trigger metric, plus every version seen (for pinned runs)."""

    def __init__(self, flows: list[Flow] | None = None) -> None:
        self._current: dict[str, Program] = {}
        self._versions: dict[tuple[str, int], Program] = {}
        self._by_metric: dict[str, list[Program]] = {}
        self._dated: list[Program] = []
        for flow in flows or []:
            self.put(flow)

    def put(self, flow: Flow) -> None:
        """Add or replace a flow (a new version becomes current; older ones stay for runs)."""
        program = compile_flow(flow)
        self._versions[(flow.id, flow.version)] = program
        self._current[flow.id] = program
        self._reindex()

    def remove(self, flow_id: str) -> None:
        """Forget a flow's current version (a tombstone): it starts nothing more."""
        if self._current.pop(flow_id, None) is not None:
            self._reindex()

    def _reindex(self) -> None:
        by_metric: dict[str, list[Program]] = defaultdict(list)
        dated = []
        for program in self._current.values():
            trigger = program.flow.trigger
            if trigger.kind == "date_property":
                dated.append(program)
            elif trigger.metric:
                by_metric[trigger.metric].append(program)
        self._by_metric = dict(by_metric)
        self._dated = dated

    def current(self, flow_id: str) -> Program | None:
        """The flow's current version, or None when it was removed (or never known)."""
        return self._current.get(flow_id)

    def version(self, flow_id: str, version: int, shape: str = "") -> Program | None:
        """A given version. When it is not known (after a restart, compaction may have left only
        the latest one on the flows topic) the current version stands in if it has the same
        shape; otherwise None."""
        known = self._versions.get((flow_id, version))
        if known is not None:
            return known
        current = self._current.get(flow_id)
        return current if current is not None and current.shape == shape else None

    def triggered_by(self, metric: str) -> list[Program]:
        """Current flows whose trigger listens to `metric`."""
        return self._by_metric.get(metric, [])

    def dated(self) -> list[Program]:
        """Current flows with a date-property trigger."""
        return self._dated

    def __len__(self) -> int:
        return len(self._current)
