"""`flowhook preview`: the requests a flow would send for one event and profile. Sends nothing.

Preview does not walk the flow itself: it runs the engine's own core (`engine.core.handle`)
on a fresh profile state holding the given profile, for the event at the event's `time`,
then wakes the run at the end of each delay as the processor would, and tells the core's
trace (`engine.trace`) as text: entry (trigger, trigger filters, profile filters), each
delay ("then wait 2d" and when the run moves on), each split and the branch taken, each
webhook with the request of the webhook-due record the core produced, and an exit (the
profile filters are checked again before every step). History holds only the triggering
event. What preview shows is what the engine does, because it is the engine's code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from processor import __version__, records
from processor.basics import MASK, mask_tags, profile_key
from processor.clock import iso, now_ms
from processor.constants import (
    HEADER_WEBHOOK_ID,
    HEADER_WEBHOOK_SIGNATURE,
    HEADER_WEBHOOK_TIMESTAMP,
    USER_AGENT_PREFIX,
)
from processor.engine import core
from processor.engine.flowset import FlowSet
from processor.engine.state import ProfileState
from processor.engine.trace import Trace, TraceStep
from processor.errors import InputError, Problem
from processor.flows.loader import ParseError, PathKey, line_of, parse_text
from processor.flows.model import DelayStep, Flow, SplitStep, Step, WebhookStep
from processor.flows.render import RenderedRequest
from processor.ops.publish import describe_delay, describe_trigger

INDENT = "    "


@dataclass
class Preview:
    """The text lines of a preview, and the requests it found (for tests and tools)."""

    lines: list[str] = field(default_factory=list)
    requests: list[tuple[str, RenderedRequest]] = field(default_factory=list)
    entered: bool = False
    dues: list[dict[str, Any]] = field(default_factory=list)  # the core's webhook-due records

    def say(self, text: str, depth: int = 0) -> None:
        """Add a line, indented `depth` levels."""
        self.lines.append(INDENT * depth + text if text else "")


# --- input files -----------------------------------------------------------------------


def read_record_file(path: str | Path, kind: str, *,
                     profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON (or YAML) object from a file, checked against the `event` or `profile` schema.

    An event file may leave out `id` and `time` (preview defaults them) and, when a profile
    file is given, `profile`.
    """
    source = str(path)
    try:
        data, lines = parse_text(Path(path).read_text(encoding="utf-8"),
                                 json_file=source.lower().endswith(".json"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError([Problem(source, None, "", f"cannot read the file: {exc}")]) from None
    except ParseError as exc:
        raise InputError([Problem(source, exc.line, "", exc.message)]) from None
    return record_from_data(data, lines, source=source, kind=kind, profile=profile)


def record_from_data(data: Any, lines: dict[PathKey, int], *, source: str, kind: str,
                     profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`read_record_file` after parsing: the same defaults and schema check (the console's pasted events)."""
    if not isinstance(data, dict):
        raise InputError([Problem(source, 1, "", f"the {kind} file must hold one JSON object")])
    if kind == "event":
        data.setdefault("id", "evt_preview")
        data.setdefault("time", _iso_now())
        data.setdefault("properties", {})
        if profile is not None:
            data.setdefault("profile", {k: profile[k] for k in ("id", "email") if k in profile})
    error = records.validation_error("event" if kind == "event" else "profile", data)
    if error is not None:
        field_path = _field_of(error)
        line = line_of(lines, field_path) if field_path else 1
        raise InputError([Problem(source, line, ".".join(map(str, field_path)),
                                  f"not a valid {kind}: {error} (see schemas/{kind}.schema.json)")])
    return data


def _iso_now() -> str:
    return iso(now_ms())


def _field_of(message: str) -> PathKey:
    """'data.profile.id must be ...' -> ('profile', 'id')."""
    first = message.split(" ", 1)[0]
    parts = first.split(".")[1:] if first.startswith("data") else []
    return tuple(p for p in parts if p)


def merged_profile(profile: Mapping[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any]:
    """The stored profile as the engine would see it: the profile file, updated by the event's
    profile (the engine's own merge), with the engine's profile key as `id` when it has none."""
    stored: dict[str, Any] = json.loads(json.dumps(profile or {}))
    core.merge_profile(stored, dict(event.get("profile") or {}))
    key = profile_key(stored)
    if "id" not in stored and key is not None:
        stored["id"] = key
    return stored


# --- the engine's run, told -----------------------------------------------------------

# A run takes each step once (flows are trees), so this many wake-ups is never reached; it
# only guards the loop below against a core that stopped moving a run on.
MAX_WAKEUPS = 10_000


def preview(flow: Flow, event: Mapping[str, Any], profile: Mapping[str, Any] | None = None) -> Preview:
    """Run `flow` through the engine's core for `event` and `profile` and describe what it did."""
    out = Preview()
    stored = merged_profile(profile, event)
    start = core.event_time_ms(dict(event), now_ms())
    out.say(f"flow {flow.id} (version {flow.version}, {flow.status}): {flow.name}")
    out.say(f"trigger: {describe_trigger(flow.trigger)}")
    _status_note(out, flow)
    if flow.trigger.kind == "date_property":
        out.say("note: a date_property flow starts from the profile's date, not from an event; "
                "the event below only supplies template data")
    trace, dues = engine_run(flow, event, stored, start)
    _tell(out, flow, event, trace)
    out.dues = dues
    if out.entered:
        count = len(out.requests)
        out.say(f"end of flow: {count} webhook request{'s' if count != 1 else ''}")
    return out


def engine_run(flow: Flow, event: Mapping[str, Any], stored: Mapping[str, Any],
               start_ms: int) -> tuple[Trace, list[dict[str, Any]]]:
    """The engine core's trace and webhook-due records for one profile holding `stored` that
    sends `event` at its own time, woken at each delay's end as the processor would wake it.

    A draft flow is run as if live (the header says it does nothing yet). A date-property
    flow is started straight from the event, and only that run is followed: the profile's
    own date may start other runs, which are not the preview's.
    """
    live = flow if flow.status != "draft" else replace(flow, status="live")
    flows = FlowSet([live])
    # The engine keys a profile by the event's own profile fields (`inputs.decode`).
    state = ProfileState(profile_key(dict(event.get("profile") or {})) or str(stored.get("id", "")))
    core.merge_profile(state.profile, dict(stored))
    record = dict(event)
    trace: Trace = []
    if live.trigger.kind == "date_property":
        program = flows.current(live.id)
        assert program is not None  # just put
        outcome = core.start_run(state, program, record, flows, start_ms, trace)
    else:
        outcome = core.handle(state, "event", record, flows, start_ms, trace=trace)
    dues = [o.value for o in outcome.outputs if o.kind == "webhook"]
    run_id = records.run_id(flow.id, state.profile_id, str(event.get("id", "")))
    for _ in range(MAX_WAKEUPS):
        run = state.runs.get(run_id)
        if run is None or run.wake_ms is None:
            break
        later: Trace = []
        wakeup = {"profile_id": state.profile_id}
        outcome = core.handle(state, "wakeup", wakeup, flows, run.wake_ms, trace=later)
        trace += [t for t in later if t.run_id == run_id]
        dues += [o.value for o in outcome.outputs if o.kind == "webhook" and o.value["run_id"] == run_id]
    return trace, dues


def _status_note(out: Preview, flow: Flow) -> None:
    if flow.status == "draft":
        out.say("note: status draft: this flow does nothing until its status is live")
    elif flow.status == "manual":
        out.say("note: status manual: every webhook step records `held` and sends nothing")


def _tell(out: Preview, flow: Flow, event: Mapping[str, Any], trace: Trace) -> None:
    """The core's decisions as lines, each step indented by how deep in splits it stands."""
    if not trace:  # the core did not look at this flow: the event's metric does not trigger it
        out.say(f"✗ does not enter: the event's metric {event.get('metric')!r} does not trigger this flow "
                f"(it waits for {flow.trigger.metric!r})")
        return
    depths = _depths(flow.steps, 0, {})
    for done in trace:
        depth = depths.get(done.step.id, 0) if done.step is not None else 0
        _ENTRY_LINES.get(done.kind, _step_lines)(out, flow, done, depth)


def _not_entered(out: Preview, flow: Flow, done: TraceStep, depth: int) -> None:
    what = {"not_member": "", "trigger_filter_failed": "trigger filter ", "draft": "",
            "reentry_refused": "re-entry ", "profile_filter_failed": "profile filter "}[done.kind]
    reason = done.reason if done.kind != "draft" else "the flow is draft"
    out.say(f"✗ does not enter: {what}{reason}")


def _entered(out: Preview, flow: Flow, done: TraceStep, depth: int) -> None:
    out.entered = True
    out.say("✓ enters the flow" + (" (trigger and profile filters hold)"
                                   if flow.trigger.filters or flow.profile_filters else ""))


def _step_lines(out: Preview, flow: Flow, done: TraceStep, depth: int) -> None:
    step = done.step
    if done.kind == "delay_skipped" and isinstance(step, DelayStep):
        out.say(f"then {describe_delay(step)} (skipped: nothing follows it, as Klaviyo skips a delay "
                "at the end)", depth)
    elif done.kind == "delay" and isinstance(step, DelayStep):
        out.say(f"then {describe_delay(step)}", depth)
        if done.until_ms is not None and done.until_ms > done.at_ms:
            out.say(f"(the run moves on at {iso(done.until_ms)})", depth + 1)
    elif done.kind == "split" and isinstance(step, SplitStep):
        branch = step.then if done.branch == "then" else step.else_
        why = "conditions hold" if done.reason is None else done.reason
        out.say(f"split {step.id} on {step.on}: {why} → {done.branch} branch"
                + ("" if branch else " (empty: the run continues after the split)"), depth)
    elif done.kind == "webhook" and isinstance(step, WebhookStep) and done.due is not None:
        _webhook(out, step, done.due, depth)
    elif done.kind == "exited":
        reason = str(done.reason)
        if reason.startswith("profile filter: "):
            reason = "profile filter " + reason.removeprefix("profile filter: ")
        where = f" before {_step_name(step)}" if step is not None else ""
        out.say(f"✗ the run exits{where}: {reason}", depth)


_ENTRY_LINES = {"not_member": _not_entered, "draft": _not_entered, "trigger_filter_failed": _not_entered,
                "reentry_refused": _not_entered, "profile_filter_failed": _not_entered, "entered": _entered,
                "completed": lambda *_: None}


def _step_name(step: Step) -> str:
    if isinstance(step, WebhookStep):
        return f"webhook {step.id}"
    return f"split {step.id}" if isinstance(step, SplitStep) else f"delay {step.id}"


def _depths(steps: Sequence[Step], depth: int, into: dict[str, int]) -> dict[str, int]:
    """Step id -> how many splits it stands in (for indenting)."""
    for step in steps:
        into[step.id] = depth
        if isinstance(step, SplitStep):
            _depths(step.then, depth + 1, into)
            _depths(step.else_, depth + 1, into)
    return into


def _webhook(out: Preview, step: WebhookStep, due: Mapping[str, Any], depth: int) -> None:
    request = rendered_of(due)
    out.requests.append((step.id, request))
    held = ""
    if due["mode"] == "held":
        held = " (held: status manual, nothing is sent; it waits in `flowhook held`)"
    out.say(f"webhook {step.id}{held}", depth)
    for line in request_lines(due):
        out.say(line, depth + 1)


def rendered_of(due: Mapping[str, Any]) -> RenderedRequest:
    """The rendered request a webhook-due record carries."""
    request = due["request"]
    return RenderedRequest(method=request["method"], url=request["url"], headers=dict(request["headers"]),
                           secret_headers=dict(request["secret_headers"]), body=request["body"],
                           signing_secrets=list(request["signing_secrets"]), error=due.get("error"))


def request_lines(due: Mapping[str, Any]) -> list[str]:
    """Method and URL, every header (secrets masked) and the pretty-printed body of a due record."""
    request = rendered_of(due)
    lines = [f"{request.method} {request.url}",
             "Content-Type: application/json",
             f"User-Agent: {USER_AGENT_PREFIX}{__version__}",
             f"{HEADER_WEBHOOK_ID}: {due['delivery_id']}",
             f"{HEADER_WEBHOOK_TIMESTAMP}: (the time of sending)"]
    if request.signing_secrets:
        names = ", ".join(request.signing_secrets)
        lines.append(f"{HEADER_WEBHOOK_SIGNATURE}: v1,{MASK} (signed with {names})")
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines += [f"{name}: {mask_tags(value)}" for name, value in request.secret_headers.items()]
    if request.error is not None:
        lines.append(f"✗ invalid: {request.error}; the delivery would be recorded as `invalid`")
    if request.body is not None:
        lines.append("")
        lines += pretty_body(request.body).splitlines()
    return lines


def pretty_body(body: str) -> str:
    """The body indented for reading (as it is, when it is not JSON)."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body
