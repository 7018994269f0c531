"""What the processor's table holds per profile, and its compact serialisation.

One `ProfileState` per profile id: the stored profile, the active runs (each pinned to the
flow version it started with, with its next step and wake time), entry history per flow
(for re-entry rules), recent event ids (de-duplication), bounded per-metric event times
(history filters), date-property schedules, and a small outbox (see `core.handle`).
Pure: no Kafka imports.

Typed with msgspec and serialised as one MessagePack array (`_Stored`): decoding builds the
Runs and DateSchedules directly, with no intermediate dicts, and the bytes are about a third
smaller than the JSON object this replaced. The next due time comes first, so the restart
path can skip profiles with nothing due from the first bytes. State written by earlier
versions (a JSON object with short keys) is still read, and rewritten in the new form the
next time the profile changes.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import orjson
from msgspec import Struct, field

# How much history a profile keeps: enough for history filters and de-duplication
# without letting one busy profile grow without bound.
RECENT_EVENT_IDS: Final = 200
HISTORY_PER_METRIC: Final = 100
# Outbox entries older than this (relative to the newest) are dropped: far longer than a
# commit interval, so a record processed again after a crash still finds its outputs.
OUTBOX_KEEP_MS: Final = 15 * 60_000
OUTBOX_MAX_ENTRIES: Final = 64


class Run(Struct, array_like=True, gc=False):
    """One profile's pass through one flow version (no cycles: not tracked by the GC)."""

    run_id: str
    flow_id: str
    version: int
    pc: int  # index of the next instruction in the compiled flow (see core.compile_flow)
    event: dict[str, Any]  # the triggering event record
    start_ms: int  # the triggering event's time: "since flow_start" counts from here
    wake_ms: int | None = None  # waiting on a delay until then
    shape: str = ""  # the shape of the flow version (see flowset.Program)


class DateSchedule(Struct, array_like=True, gc=False):
    """The next firing of a date-property trigger for one profile and flow."""

    target_ms: int | None  # None: nothing left to fire (a one-off date already passed)
    value: str  # the property value the target was computed from
    signature: str  # the trigger's settings the target was computed with


class ProfileState(Struct):
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


class _Stored(Struct, array_like=True, gc=False):
    """The serialised form: next due first (for `never_due`), then what `due_of` reads."""

    d: tuple[int, str] | None  # (when, why) the profile falls due next
    i: str  # profile id
    p: int  # partition
    f: dict[str, Any]  # the stored profile
    t: dict[str, DateSchedule]
    r: list[Run]
    e: dict[str, list[int]]
    s: list[str]
    h: dict[str, list[int]]
    o: list[list[Any]]


class _DueView(Struct, array_like=True, gc=False):
    """The first fields of `_Stored` (msgspec skips the rest of the array)."""

    d: tuple[int, str] | None
    i: str
    p: int
    f: dict[str, Any]
    t: dict[str, msgspec.Raw]  # only the flow ids are needed: the schedules stay undecoded


class _DueTime(Struct, array_like=True, gc=False):
    """The first three fields of `_Stored`: all a due-index rebuild needs while no flow has
    a date trigger (the profile is then not read: about half the decoding of `_DueView`)."""

    d: tuple[int, str] | None
    i: str
    p: int


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_Stored)
_due_decoder: Final = msgspec.msgpack.Decoder(_DueView)
_due_time_decoder: Final = msgspec.msgpack.Decoder(_DueTime)


def dumps(state: ProfileState) -> bytes:
    """Compact MessagePack bytes for the table; next due (when, reason) first for the due index."""
    return _encoder.encode(_Stored(
        state.next_due(), state.profile_id, state.partition, state.profile, state.dates,
        list(state.runs.values()), state.entries, state.seen, state.history, state.outbox,
    ))


def loads(data: bytes) -> ProfileState:
    """The inverse of `dumps` (and the reader of the earlier JSON form)."""
    if data[:1] == b"{":
        return _loads_json(data)
    raw = _decoder.decode(data)
    return ProfileState(
        profile_id=raw.i,
        partition=raw.p,
        profile=raw.f,
        runs={r.run_id: r for r in raw.r},
        entries=raw.e,
        seen=raw.s,
        history=raw.h,
        dates=raw.t,
        outbox=raw.o,
    )


def _loads_json(data: bytes) -> ProfileState:
    """State as versions before the typed state wrote it: a JSON object with short keys."""
    raw = orjson.loads(data)
    runs = (Run(*r) for r in raw["r"])
    return ProfileState(
        profile_id=raw["i"],
        partition=raw["p"],
        profile=raw["f"],
        runs={r.run_id: r for r in runs},
        entries=raw["e"],
        seen=raw["s"],
        history=raw["h"],
        dates={k: DateSchedule(*v) for k, v in raw["t"].items()},
        outbox=raw["o"],
    )


class DueSummary(Struct, frozen=True):
    """What the due index needs of a stored state, read without building a ProfileState."""

    profile_id: str
    partition: int
    due_ms: int | None
    reason: str  # why it falls due: "delay" or "date_property"
    profile: dict[str, Any]
    dated_flows: frozenset[str]  # flows whose date trigger this profile has a schedule for


# How `dumps` starts when nothing of the profile falls due (no waiting run, no date trigger):
# a 10-element MessagePack array, then nil; and how the earlier JSON form started.
_NEVER_DUE_PREFIXES: Final = (b"\x9a\xc0", b'{"d":null,')


def never_due(data: bytes) -> bool:
    """True when serialised state has nothing that falls due, read without decoding it
    (`dumps` writes the next due time first)."""
    return data.startswith(_NEVER_DUE_PREFIXES)


def due_time_of(data: bytes) -> tuple[str, int, int | None, str]:
    """(profile id, partition, due ms or None, reason) of serialised state: `due_of`
    without the profile and the date schedules."""
    if data[:1] == b"{":
        summary = due_of(data)
        return summary.profile_id, summary.partition, summary.due_ms, summary.reason
    view = _due_time_decoder.decode(data)
    due_ms, reason = view.d or (None, "delay")
    return view.i, view.p, due_ms, reason


def due_of(data: bytes) -> DueSummary:
    """The due-index summary of serialised state."""
    if data[:1] == b"{":
        raw = orjson.loads(data)
        due_ms, reason = raw["d"] or (None, "delay")
        return DueSummary(raw["i"], raw["p"], due_ms, reason, raw["f"], frozenset(raw["t"]))
    view = _due_decoder.decode(data)
    due_ms, reason = view.d or (None, "delay")
    return DueSummary(view.i, view.p, due_ms, reason, view.f, frozenset(view.t))
