"""`flowhook preview`: the requests a flow would send for one event and profile. Sends nothing.

The walk follows the run the engine would make: the trigger (metric, list or segment),
trigger filters on the event, profile filters at entry, then each step in order. Splits are
decided with the given profile and event, delays are shown as "then wait 2d", and before
every webhook the profile filters are checked again, as the engine does. The run starts at
the event's `time`, and history holds only the triggering event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor import __version__, records
from processor.clock import iso, now_ms, parse_iso_ms
from processor.constants import (
    HEADER_WEBHOOK_ID,
    HEADER_WEBHOOK_SIGNATURE,
    HEADER_WEBHOOK_TIMESTAMP,
    USER_AGENT_PREFIX,
)
from processor.errors import InputError, Problem
from processor.flows.filters import FilterContext, evaluate
from processor.flows.loader import ParseError, PathKey, line_of, parse_text
from processor.flows.model import DelayStep, Flow, SplitStep, Step, WebhookStep
from processor.flows.render import SECRET_TAG, RenderedRequest, render_webhook
from processor.ops.publish import describe_delay, describe_trigger

MASK = "••••"
INDENT = "    "


@dataclass
class Preview:
    """The text lines of a preview, and the requests it found (for tests and tools)."""

    lines: list[str] = field(default_factory=list)
    requests: list[tuple[str, RenderedRequest]] = field(default_factory=list)
    entered: bool = False

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
    """The stored profile as the engine would see it: the profile file, updated by the event's profile."""
    stored: dict[str, Any] = json.loads(json.dumps(profile or {}))
    carried = event.get("profile") or {}
    for key, value in carried.items():
        if key == "properties" and isinstance(value, dict):
            stored.setdefault("properties", {}).update(value)
        else:
            stored[key] = value
    if "id" not in stored and isinstance(stored.get("email"), str):
        stored["id"] = stored["email"].lower()
    return stored


# --- the walk --------------------------------------------------------------------------


def preview(flow: Flow, event: Mapping[str, Any], profile: Mapping[str, Any] | None = None) -> Preview:
    """Walk `flow` for `event` and `profile` and describe every request it would send."""
    out = Preview()
    stored = merged_profile(profile, event)
    start = _event_ms(event)
    ctx = FilterContext(profile=stored, event=dict(event), history={str(event.get("metric")): [start]},
                        now_ms=start, flow_start_ms=start)
    out.say(f"flow {flow.id} (version {flow.version}, {flow.status}): {flow.name}")
    out.say(f"trigger: {describe_trigger(flow.trigger)}")
    _status_note(out, flow)
    if not _enters(out, flow, event, ctx):
        return out
    out.entered = True
    _walk(out, flow, flow.steps, event, stored, ctx, depth=0, at_end=True)
    count = len(out.requests)
    out.say(f"end of flow: {count} webhook request{'s' if count != 1 else ''}")
    return out


def _event_ms(event: Mapping[str, Any]) -> int:
    try:
        return parse_iso_ms(str(event.get("time")))
    except ValueError:
        return now_ms()


def _status_note(out: Preview, flow: Flow) -> None:
    if flow.status == "draft":
        out.say("note: status draft: this flow does nothing until its status is live")
    elif flow.status == "manual":
        out.say("note: status manual: every webhook step records `held` and sends nothing")


def _enters(out: Preview, flow: Flow, event: Mapping[str, Any], ctx: FilterContext) -> bool:
    trigger = flow.trigger
    if trigger.kind == "date_property":
        out.say("note: a date_property flow starts from the profile's date, not from an event; "
                "the event below only supplies template data")
    elif event.get("metric") != trigger.metric:
        out.say(f"✗ does not enter: the event's metric {event.get('metric')!r} does not trigger this flow "
                f"(it waits for {trigger.metric!r})")
        return False
    elif not _membership_matches(out, flow, event):
        return False
    reason = evaluate(trigger.filters, ctx)
    if reason is not None:
        out.say(f"✗ does not enter: trigger filter {reason}")
        return False
    reason = evaluate(flow.profile_filters, ctx)
    if reason is not None:
        out.say(f"✗ does not enter: profile filter {reason}")
        return False
    out.say("✓ enters the flow" + (" (trigger and profile filters hold)"
                                   if trigger.filters or flow.profile_filters else ""))
    return True


def _membership_matches(out: Preview, flow: Flow, event: Mapping[str, Any]) -> bool:
    properties = event.get("properties") or {}
    for kind, wanted, key in (("list", flow.trigger.list_id, "list_id"),
                              ("segment", flow.trigger.segment_id, "segment_id")):
        if flow.trigger.kind == kind and str(properties.get(key)) != str(wanted):
            out.say(f"✗ does not enter: the event is for {kind} {properties.get(key)!r}, "
                    f"this flow waits for {kind} {wanted!r}")
            return False
    return True


def _walk(out: Preview, flow: Flow, steps: Sequence[Step], event: Mapping[str, Any],
          profile: dict[str, Any], ctx: FilterContext, depth: int, at_end: bool) -> bool:
    """Describe `steps` (`at_end`: nothing follows them); False when the run would exit before the end."""
    for index, step in enumerate(steps):
        last = at_end and index == len(steps) - 1
        if isinstance(step, DelayStep):
            skipped = " (skipped: nothing follows it, as Klaviyo skips a delay at the end)" if last else ""
            out.say(f"then {describe_delay(step)}{skipped}", depth)
        elif isinstance(step, SplitStep):
            if not _split(out, flow, step, event, profile, ctx, depth, last):
                return False
        elif not _webhook(out, flow, step, event, profile, ctx, depth):
            return False
    return True


def _split(out: Preview, flow: Flow, step: SplitStep, event: Mapping[str, Any], profile: dict[str, Any],
           ctx: FilterContext, depth: int, at_end: bool) -> bool:
    reason = evaluate(step.conditions, ctx)
    branch, name = (step.then, "then") if reason is None else (step.else_, "else")
    why = "conditions hold" if reason is None else reason
    out.say(f"split {step.id} on {step.on}: {why} → {name} branch"
            + ("" if branch else " (empty: the run continues after the split)"), depth)
    return _walk(out, flow, branch, event, profile, ctx, depth + 1, at_end)


def _webhook(out: Preview, flow: Flow, step: WebhookStep, event: Mapping[str, Any], profile: dict[str, Any],
             ctx: FilterContext, depth: int) -> bool:
    reason = evaluate(flow.profile_filters, ctx)
    if reason is not None:
        out.say(f"✗ the run exits before webhook {step.id}: profile filter {reason}", depth)
        return False
    request = render_webhook(step, flow=flow, event=event, profile=profile)
    out.requests.append((step.id, request))
    manual = flow.status == "manual"
    held = " (held: status manual, nothing is sent; it waits in `flowhook held`)" if manual else ""
    out.say(f"webhook {step.id}{held}", depth)
    for line in request_lines(flow, step, request, event, profile):
        out.say(line, depth + 1)
    return True


def request_lines(flow: Flow, step: WebhookStep, request: RenderedRequest, event: Mapping[str, Any],
                  profile: Mapping[str, Any]) -> list[str]:
    """Method and URL, every header (secrets masked) and the pretty-printed body."""
    run = records.run_id(flow.id, str(profile.get("id", "")), str(event.get("id", "")))
    lines = [f"{request.method} {request.url}",
             "Content-Type: application/json",
             f"User-Agent: {USER_AGENT_PREFIX}{__version__}",
             f"{HEADER_WEBHOOK_ID}: {records.delivery_id(flow.id, run, step.id)}",
             f"{HEADER_WEBHOOK_TIMESTAMP}: (the time of sending)"]
    if request.signing_secrets:
        names = ", ".join(request.signing_secrets)
        lines.append(f"{HEADER_WEBHOOK_SIGNATURE}: v1,{MASK} (signed with {names})")
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines += [f"{name}: {SECRET_TAG.sub(MASK, value)}" for name, value in request.secret_headers.items()]
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
