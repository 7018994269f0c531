"""What the processor's table holds per profile, and its compact serialisation.

One `ProfileState` per profile id: the stored profile, the active runs (each pinned to the
flow version it started with, with its next step and wake time), entry history per flow
(for re-entry rules), recent event ids (de-duplication), bounded per-metric event times
(history filters), date-property schedules, and a small outbox (see `core.handle`).
Pure: no Kafka imports. Serialised with orjson as one JSON object with short keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

# How much history a profile keeps: enough for history filters and de-duplication
# without letting one busy profile grow without bound.
RECENT_EVENT_IDS: Final = 200
HISTORY_PER_METRIC: Final = 100
# Outbox entries older than this (relative to the newest) are dropped: far longer than a
# commit interval, so a record processed again after a crash still finds its outputs.
OUTBOX_KEEP_MS: Final = 15 * 60_000
OUTBOX_MAX_ENTRIES: Final = 64


@dataclass
class Run:
    """One profile's pass through one flow version."""

    run_id: str
    flow_id: str
    version: int
    pc: int  # index of the next instruction in the compiled flow (see core.compile_flow)
    event: dict[str, Any]  # the triggering event record
    start_ms: int  # the triggering event's time: "since flow_start" counts from here
    wake_ms: int | None = None  # waiting on a delay until then
    shape: str = ""  # the shape of the flow version (see flowset.Program)

    def pack(self) -> list[Any]:
        return [
            self.run_id,
            self.flow_id,
            self.version,
            self.pc,
            self.event,
            self.start_ms,
            self.wake_ms,
            self.shape,
        ]

    @classmethod
    def unpack(cls, data: list[Any]) -> Run:
        return cls(*data)


@dataclass
class DateSchedule:
    """The next firing of a date-property trigger for one profile and flow."""

    target_ms: int | None  # None: nothing left to fire (a one-off date already passed)
    value: str  # the property value the target was computed from
    signature: str  # the trigger's settings the target was computed with

    def pack(self) -> list[Any]:
        return [self.target_ms, self.value, self.signature]

    @classmethod
    def unpack(cls, data: list[Any]) -> DateSchedule:
        return cls(*data)


@dataclass
class ProfileState:
    """Everything the processor knows about one profile."""

    profile_id: str
    partition: int = -1  # the input partition this profile lives on (for the due index)
    profile: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    entries: dict[str, list[int]] = field(default_factory=dict)  # flow id -> [count, last entry ms]
    seen: list[str] = field(default_factory=list)  # recent event ids, oldest first
    history: dict[str, list[int]] = field(default_factory=dict)  # metric -> event times, ascending
    dates: dict[str, DateSchedule] = field(default_factory=dict)  # flow id -> schedule
    # [source position, processed at ms, outputs as dicts]: see core.handle.
    outbox: list[list[Any]] = field(default_factory=list)

    def next_due_ms(self) -> int | None:
        """The earliest time something of this profile falls due (a delay or a date trigger)."""
        due = self.next_due()
        return None if due is None else due[0]

    def next_due(self) -> tuple[int, str] | None:
        """(when, "delay" | "date_property") of the earliest thing that falls due, or None."""
        times = [(r.wake_ms, "delay") for r in self.runs.values() if r.wake_ms is not None]
        times += [(d.target_ms, "date_property") for d in self.dates.values() if d.target_ms is not None]
        return min(times) if times else None

    def remember_event(self, event_id: str) -> None:
        self.seen.append(event_id)
        if len(self.seen) > RECENT_EVENT_IDS:
            del self.seen[: len(self.seen) - RECENT_EVENT_IDS]

    def record_metric(self, metric: str, time_ms: int) -> None:
        times = self.history.setdefault(metric, [])
        if not times or times[-1] <= time_ms:
            times.append(time_ms)
        else:  # a late event: keep the list ascending
            times.append(time_ms)
            times.sort()
        if len(times) > HISTORY_PER_METRIC:
            del times[: len(times) - HISTORY_PER_METRIC]


def dumps(state: ProfileState) -> bytes:
    """Compact JSON bytes for the table; `d` (next due, reason) first for the due index."""
    return orjson.dumps(
        {
            "d": state.next_due(),
            "i": state.profile_id,
            "p": state.partition,
            "f": state.profile,
            "r": [r.pack() for r in state.runs.values()],
            "e": state.entries,
            "s": state.seen,
            "h": state.history,
            "t": {k: v.pack() for k, v in state.dates.items()},
            "o": state.outbox,
        }
    )


def loads(data: bytes) -> ProfileState:
    """The inverse of `dumps`."""
    raw = orjson.loads(data)
    runs = (Run.unpack(r) for r in raw["r"])
    return ProfileState(
        profile_id=raw["i"],
        partition=raw["p"],
        profile=raw["f"],
        runs={r.run_id: r for r in runs},
        entries=raw["e"],
        seen=raw["s"],
        history=raw["h"],
        dates={k: DateSchedule.unpack(v) for k, v in raw["t"].items()},
        outbox=raw["o"],
    )


@dataclass(frozen=True)
class DueSummary:
    """What the due index needs of a stored state, read without building a ProfileState."""

    profile_id: str
    partition: int
    due_ms: int | None
    reason: str  # why it falls due: "delay" or "date_property"
    profile: dict[str, Any]
    dated_flows: frozenset[str]  # flows whose date trigger this profile has a schedule for


# How `dumps` starts when nothing of the profile falls due (no waiting run, no date trigger).
_NEVER_DUE_PREFIX: Final = b'{"d":null,'


def never_due(data: bytes) -> bool:
    """True when serialised state has nothing that falls due, read without decoding it
    (`dumps` writes the next due time first)."""
    return data.startswith(_NEVER_DUE_PREFIX)


def due_of(data: bytes) -> DueSummary:
    """The due-index summary of serialised state."""
    raw = orjson.loads(data)
    due_ms, reason = raw["d"] or (None, "delay")
    return DueSummary(raw["i"], raw["p"], due_ms, reason, raw["f"], frozenset(raw["t"]))
