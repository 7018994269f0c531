"""The flow engine's semantics as pure functions: (state, record, flows, now) -> (state, outputs).

No Kafka here. `engine.app` feeds every input record of one profile through `handle`, writes
the returned state to the table and produces the outputs. Handlers update the state object
they are given in place and return it.

Per record, in order:
1. a record already processed at the same source position (a re-read after a crash) gets
   its recorded outputs again and changes nothing (see `handle`);
2. profile fields on the record are merged into the stored profile;
3. an event is de-duplicated by id, recorded in the metric history, and starts runs of the
   flows it triggers (status, trigger filters, re-entry, profile filters at entry);
4. date-property schedules are refreshed from the stored profile;
5. whatever fell due (delays, date triggers) advances.

A run advances step by step until it waits on a delay or ends; before every step the
profile filters are checked again and the flow's current status is consulted (draft or
removed: the run exits; manual: webhook steps are held).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from processor import records
from processor.clock import iso, parse_iso_ms
from processor.engine.flowset import END, FlowSet, Program
from processor.engine.state import OUTBOX_KEEP_MS, OUTBOX_MAX_ENTRIES, DateSchedule, ProfileState, Run
from processor.engine.trace import Trace, TraceStep
from processor.flows import delays
from processor.flows.filters import FilterContext, evaluate
from processor.flows.lookup import MISSING, profile_value
from processor.flows.model import DateProperty, DelayStep, Flow, SplitStep, WebhookStep
from processor.flows.render import render_webhook

RecordKind = Literal["event", "profile", "wakeup"]
OutputKind = Literal["webhook", "result"]
PROFILE_SKIP_FIELDS = frozenset({"time"})  # fields of a profile update that are not profile data


@dataclass(frozen=True)
class Output:
    """A record to produce: a webhook-due record (key: delivery id) or a result (key: run id)."""

    kind: OutputKind
    key: str
    value: dict[str, Any]

    def pack(self) -> list[Any]:
        return [self.kind, self.key, self.value]


@dataclass
class Outcome:
    """What handling one record produced; `changed` is False when the table needs no write."""

    state: ProfileState
    outputs: list[Output] = field(default_factory=list)
    changed: bool = True


# --- entry point -----------------------------------------------------------------------


def handle(
    state: ProfileState,
    kind: RecordKind,
    record: dict[str, Any],
    flows: FlowSet,
    now_ms: int,
    src: str | None = None,
    trace: Trace | None = None,
) -> Outcome:
    """Handle one input record of this profile.

    `src` is the record's source position ("topic:partition:offset"). Outputs of a record
    are kept in the state's outbox under it for a while: if the worker crashed after the
    table write reached Kafka but before the outputs did, the record is read again at the
    same position and its outputs are produced again instead of being lost (a replayed
    event has a new position and is de-duplicated instead).

    `trace`, when given, collects every decision taken (`engine.trace`): preview's view of
    the run. The engine passes none.
    """
    if src is not None:
        for position, _at, packed in state.outbox:
            if position == src:
                return Outcome(state, [Output(*o) for o in packed], changed=False)
    handler = _HANDLERS[kind]
    outcome = handler(state, record, flows, now_ms, trace)
    if src is not None and outcome.outputs:
        _remember_outputs(state, src, now_ms, outcome.outputs)
    return outcome


def drop_committed(state: ProfileState, committed: Callable[[str, int], int | None]) -> None:
    """Forget outbox entries of records whose offsets are committed: they will not be read
    again, and Faust flushed the producer before committing, so their outputs are on Kafka.
    `committed(topic, partition)` is the committed offset (the next one to read) or None."""
    kept = []
    for entry in state.outbox:
        topic, partition, offset = entry[0].rsplit(":", 2)
        done = committed(topic, int(partition))
        if done is None or int(offset) >= done:
            kept.append(entry)
    state.outbox = kept


def _remember_outputs(state: ProfileState, src: str, now_ms: int, outputs: list[Output]) -> None:
    state.outbox.append([src, now_ms, [o.pack() for o in outputs]])
    newest = max(entry[1] for entry in state.outbox)
    kept = [e for e in state.outbox if e[1] >= newest - OUTBOX_KEEP_MS]
    state.outbox = kept[-OUTBOX_MAX_ENTRIES:]


def handle_event(
    state: ProfileState, event: dict[str, Any], flows: FlowSet, now_ms: int, trace: Trace | None = None
) -> Outcome:
    """A storefront event: merge its profile fields, de-duplicate, record, start runs, advance."""
    event_id = event["id"]
    if event_id in state.seen:
        return Outcome(state, changed=False)
    outputs: list[Output] = []
    merge_profile(state.profile, event.get("profile") or {})
    state.remember_event(event_id)
    event_ms = event_time_ms(event, now_ms)
    state.record_metric(event["metric"], event_ms)
    for program in flows.triggered_by(event["metric"]):
        other = _membership_mismatch(program.flow, event)
        if other is None:
            _try_start(state, program, event, event_ms, flows, now_ms, outputs, trace)
        elif trace is not None:
            trace.append(TraceStep("not_member", program.flow.id, at_ms=now_ms, reason=other))
    _refresh_and_advance(state, flows, now_ms, outputs, trace)
    return Outcome(state, outputs)


def handle_profile_update(
    state: ProfileState, update: dict[str, Any], flows: FlowSet, now_ms: int, trace: Trace | None = None
) -> Outcome:
    """A profile update: merge it; it starts nothing except through date-property triggers."""
    outputs: list[Output] = []
    merge_profile(state.profile, update)
    _refresh_and_advance(state, flows, now_ms, outputs, trace)
    return Outcome(state, outputs)


def handle_wakeup(
    state: ProfileState, wakeup: dict[str, Any], flows: FlowSet, now_ms: int, trace: Trace | None = None
) -> Outcome:
    """A wake-up: advance whatever of this profile is due at `now_ms` (duplicates are harmless)."""
    outputs: list[Output] = []
    before = state.next_due_ms()
    _refresh_and_advance(state, flows, now_ms, outputs, trace)
    changed = bool(outputs) or state.next_due_ms() != before
    return Outcome(state, outputs, changed=changed)


_HANDLERS = {"event": handle_event, "profile": handle_profile_update, "wakeup": handle_wakeup}


# --- profile ---------------------------------------------------------------------------


def merge_profile(stored: dict[str, Any], incoming: dict[str, Any]) -> None:
    """Merge profile fields field by field; custom `properties` merge key by key."""
    for name, value in incoming.items():
        if name in PROFILE_SKIP_FIELDS:
            continue
        if name == "properties" and isinstance(value, dict):
            custom = stored.get("properties")
            if not isinstance(custom, dict):
                custom = stored["properties"] = {}
            custom.update(value)
        else:
            stored[name] = value


def event_time_ms(event: dict[str, Any], default_ms: int) -> int:
    """The event's `time` in ms (inputs are checked before, so the default is a safety net)."""
    try:
        return parse_iso_ms(event["time"])
    except (KeyError, TypeError, ValueError):
        return default_ms


# --- entering a flow -------------------------------------------------------------------


def _membership_mismatch(flow: Flow, event: dict[str, Any]) -> str | None:
    """Why a list or segment trigger does not take this event (None: it does)."""
    trigger = flow.trigger
    if trigger.kind not in ("list", "segment"):
        return None
    if trigger.kind == "list":
        key, wanted = "list_id", trigger.list_id
    else:
        key, wanted = "segment_id", trigger.segment_id
    got = (event.get("properties") or {}).get(key)
    if str(got) == str(wanted):
        return None
    return f"the event is for {trigger.kind} {got!r}, this flow waits for {trigger.kind} {wanted!r}"


def _try_start(
    state: ProfileState,
    program: Program,
    event: dict[str, Any],
    event_ms: int,
    flows: FlowSet,
    now_ms: int,
    outputs: list[Output],
    trace: Trace | None = None,
) -> None:
    """Start a run of `program` for `event` when the flow's entry rules let it in."""
    flow = program.flow
    if flow.status == "draft":
        if trace is not None:
            trace.append(TraceStep("draft", flow.id, at_ms=now_ms))
        return
    ctx = _context(state, event, now_ms, None)
    reason = evaluate(flow.trigger.filters, ctx)
    if reason is not None:  # the event does not qualify: not a run, nothing to report
        if trace is not None:
            trace.append(TraceStep("trigger_filter_failed", flow.id, at_ms=now_ms, reason=reason))
        return
    run_id = records.run_id(flow.id, state.profile_id, event["id"])
    if not _may_enter(state, flow, run_id, event_ms):
        if trace is not None:
            trace.append(TraceStep("reentry_refused", flow.id, run_id, now_ms, reason=flow.reentry.mode))
        return
    run = Run(
        run_id, flow.id, flow.version, program.start, _event_for_run(event), event_ms, shape=program.shape
    )
    reason = evaluate(flow.profile_filters, _context(state, event, now_ms, event_ms))
    if reason is not None:
        if trace is not None:
            trace.append(TraceStep("profile_filter_failed", flow.id, run_id, now_ms, reason=reason))
        outputs.append(_run_result(state, run, "exited", now_ms, f"profile filter at entry: {reason}"))
        return
    count, _last = state.entries.get(flow.id, [0, 0])
    state.entries[flow.id] = [count + 1, event_ms]
    state.runs[run_id] = run
    if trace is not None:
        trace.append(TraceStep("entered", flow.id, run_id, now_ms))
    outputs.append(_run_result(state, run, "entered", now_ms))
    _advance(state, run, flows, now_ms, outputs, trace)


def start_run(
    state: ProfileState,
    program: Program,
    event: dict[str, Any],
    flows: FlowSet,
    now_ms: int,
    trace: Trace | None = None,
) -> Outcome:
    """Start `program` for `event` as its trigger would, whatever the trigger's kind: how
    preview runs a date-property flow, whose pasted event only supplies template data."""
    outputs: list[Output] = []
    merge_profile(state.profile, event.get("profile") or {})
    _try_start(state, program, event, event_time_ms(event, now_ms), flows, now_ms, outputs, trace)
    return Outcome(state, outputs)


def _may_enter(state: ProfileState, flow: Flow, run_id: str, at_ms: int) -> bool:
    """Re-entry rules: `once` ever, `once_per` period (by event time), `always`."""
    if run_id in state.runs:
        return False
    if flow.trigger.kind == "date_property":
        return True  # one entry per occurrence, decided by the schedule
    count, last = state.entries.get(flow.id, [0, 0])
    mode = flow.reentry.mode
    if mode == "once":
        return count == 0
    if mode == "once_per":
        return count == 0 or at_ms - last >= (flow.reentry.period_ms or 0)
    return True


def _event_for_run(event: dict[str, Any]) -> dict[str, Any]:
    """What a run keeps of its triggering event: everything but the embedded profile."""
    return {k: v for k, v in event.items() if k != "profile"}


def _context(
    state: ProfileState, event: dict[str, Any] | None, now_ms: int, start_ms: int | None
) -> FilterContext:
    return FilterContext(
        profile=state.profile, event=event, history=state.history, now_ms=now_ms, flow_start_ms=start_ms
    )


# --- advancing runs --------------------------------------------------------------------


def _refresh_and_advance(
    state: ProfileState,
    flows: FlowSet,
    now_ms: int,
    outputs: list[Output],
    trace: Trace | None = None,
) -> None:
    refresh_dates(state, flows, now_ms)
    _fire_dates(state, flows, now_ms, outputs, trace)
    for run in list(state.runs.values()):
        if run.wake_ms is not None and run.wake_ms <= now_ms:
            run.wake_ms = None
            _advance(state, run, flows, now_ms, outputs, trace)


def _advance(
    state: ProfileState,
    run: Run,
    flows: FlowSet,
    now_ms: int,
    outputs: list[Output],
    trace: Trace | None = None,
) -> None:
    """Run steps until the run waits on a delay, exits or completes."""
    program = flows.version(run.flow_id, run.version, run.shape)
    current = flows.current(run.flow_id)
    while run.wake_ms is None:
        stop = _stop_reason(state, run, program, current, now_ms)
        if stop is not None:
            if trace is not None:
                trace.append(_exit_step(run, program, now_ms, stop))
            _finish(state, run, "exited", now_ms, outputs, stop)
            return
        assert program is not None  # _stop_reason checked it
        if run.pc == END:
            if trace is not None:
                trace.append(TraceStep("completed", run.flow_id, run.run_id, now_ms))
            _finish(state, run, "completed", now_ms, outputs)
            return
        status = current.flow.status if current is not None else "draft"
        _step(state, run, program, status, now_ms, outputs, trace)


def _step(
    state: ProfileState,
    run: Run,
    program: Program,
    status: str,
    now_ms: int,
    outputs: list[Output],
    trace: Trace | None,
) -> None:
    """Take the instruction at the run's program counter and move the counter on."""
    instruction = program.instructions[run.pc]
    step = instruction.step
    run.pc = instruction.next
    if isinstance(step, DelayStep):
        if instruction.next == END:
            if trace is not None:
                trace.append(TraceStep("delay_skipped", run.flow_id, run.run_id, now_ms, step))
            return  # nothing follows: Klaviyo skips a delay at the end of a flow
        run.wake_ms = delay_until(step, now_ms, state.profile)
        if trace is not None:
            trace.append(TraceStep("delay", run.flow_id, run.run_id, now_ms, step, until_ms=run.wake_ms))
        if run.wake_ms <= now_ms:
            run.wake_ms = None
    elif isinstance(step, SplitStep):
        failed = _split_failure(state, run, step, now_ms)
        if failed is not None:
            run.pc = instruction.else_
        if trace is not None:
            branch: Literal["then", "else"] = "then" if failed is None else "else"
            trace.append(TraceStep("split", run.flow_id, run.run_id, now_ms, step, failed, branch=branch))
    elif isinstance(step, WebhookStep):
        due = webhook_due(state, run, program.flow, step, status, now_ms)
        if trace is not None:
            trace.append(TraceStep("webhook", run.flow_id, run.run_id, now_ms, step, due=due))
        outputs.append(Output("webhook", due["delivery_id"], due))


def _exit_step(run: Run, program: Program | None, now_ms: int, stop: str) -> TraceStep:
    """The trace of a run stopping before the step at its program counter."""
    step = program.instructions[run.pc].step if program is not None and run.pc != END else None
    return TraceStep("exited", run.flow_id, run.run_id, now_ms, step, stop)


def _stop_reason(
    state: ProfileState, run: Run, program: Program | None, current: Program | None, now_ms: int
) -> str | None:
    if current is None:
        return "flow removed"
    if program is None:
        return f"flow version {run.version} is no longer known and the current version's steps differ"
    if current.flow.status == "draft":
        return "flow set to draft"
    if run.pc == END:
        return None
    reason = evaluate(program.flow.profile_filters, _context(state, run.event, now_ms, run.start_ms))
    return None if reason is None else f"profile filter: {reason}"


def _split_failure(state: ProfileState, run: Run, step: SplitStep, now_ms: int) -> str | None:
    """Why the split's conditions fail (None: they hold, the run takes `then`).
    Conditions carry what they read (`on`: profile or the triggering event)."""
    return evaluate(step.conditions, _context(state, run.event, now_ms, run.start_ms))


def _finish(
    state: ProfileState,
    run: Run,
    status: Literal["exited", "completed"],
    now_ms: int,
    outputs: list[Output],
    reason: str | None = None,
) -> None:
    state.runs.pop(run.run_id, None)
    outputs.append(_run_result(state, run, status, now_ms, reason))


def _run_result(
    state: ProfileState,
    run: Run,
    status: Literal["entered", "exited", "completed"],
    now_ms: int,
    reason: str | None = None,
) -> Output:
    value = records.as_dict(records.run_result(
        run_id_=run.run_id,
        flow_id=run.flow_id,
        flow_version=run.version,
        profile_id=state.profile_id,
        event_id=run.event["id"],
        status=status,
        at_ms=now_ms,
        reason=reason,
    ))
    return Output("result", run.run_id, value)


# --- delays and dates ------------------------------------------------------------------


def delay_until(step: DelayStep, now_ms: int, profile: dict[str, Any] | None = None) -> int:
    """When a run that reaches this delay step at `now_ms` moves on (`processor.flows.delays`)."""
    return delays.delay_until(step, now_ms, profile)


next_time_of_day = delays.next_time_of_day
_hh_mm = delays.hh_mm


def date_occurrence(dp: DateProperty, value: str, from_ms: int) -> int | None:
    """The first firing at or after `from_ms` for a date value ("YYYY-MM-DD..."), or None."""
    try:
        base = date.fromisoformat(value[:10])
    except (TypeError, ValueError):
        return None
    zone = ZoneInfo(dp.timezone)
    from_year = datetime.fromtimestamp(from_ms / 1000, tz=UTC).year
    years = range(from_year - 1, from_year + 3) if dp.yearly else (base.year,)
    for year in years:
        day = _same_day_in(base, year)
        target = datetime.combine(day, _hh_mm(dp.at), tzinfo=zone)
        target_ms = int(target.timestamp() * 1000) + dp.offset_ms
        if target_ms >= from_ms:
            return target_ms
    return None


def _same_day_in(day: date, year: int) -> date:
    """The same month and day in `year` (29 February becomes 28 February in other years)."""
    try:
        return day.replace(year=year)
    except ValueError:
        return day.replace(year=year, day=28)


def _signature(dp: DateProperty) -> str:
    return f"{dp.property}|{dp.offset_ms}|{dp.at}|{dp.timezone}|{dp.yearly}"


def refresh_dates(state: ProfileState, flows: FlowSet, now_ms: int) -> None:
    """Schedule date-property triggers from the stored profile; reschedule when it changed."""
    dated = {p.flow.id: p.flow for p in flows.dated() if p.flow.status != "draft"}
    for flow_id in [f for f in state.dates if f not in dated]:
        del state.dates[flow_id]
    for flow_id, flow in dated.items():
        dp = flow.trigger.date_property
        assert dp is not None  # the loader guarantees it for date_property triggers
        raw = profile_value(state.profile, dp.property)
        if raw is MISSING or not isinstance(raw, str):
            state.dates.pop(flow_id, None)
            continue
        current = state.dates.get(flow_id)
        if current is None or current.value != raw or current.signature != _signature(dp):
            state.dates[flow_id] = DateSchedule(date_occurrence(dp, raw, now_ms), raw, _signature(dp))


def unscheduled_dates(profile: dict[str, Any], scheduled: frozenset[str], flows: FlowSet) -> bool:
    """True when a live date-property flow has no schedule yet for a profile holding its
    property (the flow was published after the profile was last seen): it needs a wake-up."""
    for program in flows.dated():
        dp = program.flow.trigger.date_property
        if program.flow.status == "draft" or dp is None or program.flow.id in scheduled:
            continue
        if isinstance(profile_value(profile, dp.property), str):
            return True
    return False


def _fire_dates(
    state: ProfileState, flows: FlowSet, now_ms: int, outputs: list[Output], trace: Trace | None = None
) -> None:
    for flow_id, schedule in list(state.dates.items()):
        if schedule.target_ms is None or schedule.target_ms > now_ms:
            continue
        program = flows.current(flow_id)
        if program is None:
            continue
        event = _date_event(state, program.flow, schedule)
        dp = program.flow.trigger.date_property
        assert dp is not None
        schedule.target_ms = (
            date_occurrence(dp, schedule.value, schedule.target_ms + 1) if dp.yearly else None
        )
        _try_start(state, program, event, parse_iso_ms(event["time"]), flows, now_ms, outputs, trace)


def _date_event(state: ProfileState, flow: Flow, schedule: DateSchedule) -> dict[str, Any]:
    """The synthetic triggering event of a date-property run (one per occurrence)."""
    dp = flow.trigger.date_property
    assert dp is not None and schedule.target_ms is not None
    at = iso(schedule.target_ms)
    return {
        "id": f"date:{flow.id}:{dp.property}:{at}",
        "metric": f"Date property: {dp.property}",
        "time": at,
        "profile": {"id": state.profile_id},
        "properties": {dp.property: schedule.value},
    }


# --- webhook steps ---------------------------------------------------------------------


def webhook_due(
    state: ProfileState, run: Run, flow: Flow, step: WebhookStep, status: str, now_ms: int
) -> dict[str, Any]:
    """The webhook-due record (docs/internals.md) for a run reaching a webhook step."""
    rendered = render_webhook(step, flow=flow, event=run.event, profile=state.profile)
    mode = "invalid" if rendered.error else ("held" if status == "manual" else "send")
    now = iso(now_ms)
    return records.as_dict(records.WebhookDue(
        delivery_id=records.delivery_id(flow.id, run.run_id, step.id),
        flow_id=flow.id,
        flow_version=flow.version,
        flow_name=flow.name,
        step_id=step.id,
        run_id=run.run_id,
        profile_id=state.profile_id,
        event_id=run.event["id"],
        metric=run.event.get("metric", ""),
        mode=mode,  # type: ignore[arg-type]
        error=rendered.error,
        request=rendered.request(),
        options=records.Options(
            timeout_ms=step.timeout_ms,
            retry_ms=list(step.retry_ms) if step.retry_ms is not None else None,
            max_age_ms=step.max_age_ms,
            rate_limit=step.rate_limit,
        ),
        due_at=now,
        created_at=now,
        attempt=1,
        not_before=None,
        first_attempt_at=None,
    ))
