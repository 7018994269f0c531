"""A flow definition (plain data) -> the flow model, collecting every problem on the way.

Each builder takes a `Checker` (where problems go, with the path of the field), the raw
value and its path, and returns a model object or None. Builders never raise on bad data:
they record a problem that says how to fix it and carry on, so one run reports everything.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processor.clock import parse_iso_ms
from processor.constants import RESERVED_HEADERS
from processor.durations import DurationError, parse_duration_ms
from processor.flows import templates
from processor.flows.filters import HISTORY_OPS, PROPERTY_OPS
from processor.flows.model import (
    ADDED_TO_SEGMENT,
    SUBSCRIBED_TO_LIST,
    Condition,
    DateProperty,
    DelayStep,
    Flow,
    Reentry,
    SplitStep,
    Step,
    Trigger,
    WebhookStep,
)
from processor.flows.render import SECRET_TAG, is_secret_header

Path = tuple[str | int, ...]

ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z\-]+$")
TIME_OF_DAY: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
STATUSES: Final = ("draft", "manual", "live")
METHODS: Final = ("POST", "PUT", "PATCH")
REENTRY_MODES: Final = ("once", "always", "once_per")
TRIGGER_KINDS: Final = ("metric", "list", "segment", "date_property")
EMAIL_METRICS: Final = frozenset({"received email", "opened email"})
MAX_TIMEOUT_MS: Final = 5 * 60_000

FLOW_KEYS: Final = ("id", "name", "description", "status", "trigger", "profile_filters", "reentry", "steps")
TRIGGER_KEYS: Final = (*TRIGGER_KINDS, "filters")
DATE_PROPERTY_KEYS: Final = ("property", "offset", "at", "timezone", "yearly")
CONDITION_KEYS: Final = ("property", "metric", "op", "value", "since", "within")
WEBHOOK_KEYS: Final = (
    "id", "url", "method", "headers", "body", "timeout", "retry", "max_age", "rate_limit", "signing_secret",
)
SPLIT_KEYS: Final = ("if", "then", "else", "on", "id")

EMAIL_TRIGGER: Final = (
    "Flowhook sees storefront events only, not email engagement, so '{}' can never start a flow; "
    "trigger on a storefront metric such as Placed Order"
)
PROPERTY_CHANGE: Final = (
    "flows cannot start on a profile property change; trigger on the event that changes it, "
    "or use date_property for a date stored on the profile"
)


def field_name(path: Path) -> str:
    """('steps', 1, 'webhook', 'url') -> 'steps[1].webhook.url'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Checker:
    """Collects problems and warnings as (path, message) while a definition is built."""

    allow_http: bool = False
    problems: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    step_ids: dict[str, Path] = field(default_factory=dict)

    def add(self, path: Path, message: str) -> None:
        self.problems.append((path, message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append((path, message))


# --- small typed readers ---------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def _mapping(ck: Checker, value: Any, path: Path, what: str) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    ck.add(path, f"{what} must be a mapping (key: value lines), got {_type_name(value)}")
    return None


def _list(ck: Checker, value: Any, path: Path, what: str) -> list[Any] | None:
    if isinstance(value, list):
        return value
    ck.add(path, f"{what} must be a list (lines starting with '- '), got {_type_name(value)}")
    return None


def _text(ck: Checker, obj: dict[str, Any], key: str, path: Path, *, required: bool = True,
          hint: str = "") -> str | None:
    if key not in obj:
        if required:
            ck.add((*path, key), f"missing; {hint}" if hint else "missing; this field is required")
        return None
    value = obj[key]
    if isinstance(value, str) and value.strip():
        return value
    ck.add((*path, key), f"must be non-empty text, got {_type_name(value) if value != '' else 'empty text'}")
    return None


def _known_keys(ck: Checker, obj: dict[str, Any], allowed: Sequence[str], path: Path, what: str) -> None:
    for key in obj:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"{what} takes {', '.join(allowed)}"
        ck.add((*path, str(key)), f"unknown field '{key}'; {hint}")


def _duration(ck: Checker, value: Any, path: Path, *, allow_negative: bool = False) -> int | None:
    try:
        ms = parse_duration_ms(value)
    except DurationError as exc:
        ck.add(path, str(exc))
        return None
    if (ms < 0 and not allow_negative) or (ms == 0 and not allow_negative):
        ck.add(path, f"must be longer than zero, got {value!r}")
        return None
    return ms


def _identifier(ck: Checker, value: Any, path: Path, what: str) -> str | None:
    if isinstance(value, str) and ID_PATTERN.match(value):
        return value
    ck.add(path, f"{what} {value!r} is not a valid id; use letters, digits, '-', '_' or '.' "
                 "(at most 128, starting with a letter or digit)")
    return None


def _timezone(ck: Checker, value: Any, path: Path) -> str | None:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
            return value
        except (ZoneInfoNotFoundError, ValueError):
            pass
    ck.add(path, f"{value!r} is not a time zone; use an IANA name such as UTC or Europe/Berlin")
    return None


def _time_of_day(ck: Checker, value: Any, path: Path) -> str | None:
    if isinstance(value, str) and TIME_OF_DAY.match(value):
        return value
    ck.add(path, f"{value!r} is not a time of day; write it quoted as \"HH:MM\", e.g. \"09:00\"")
    return None


def _template(ck: Checker, source: str, path: Path, *, allow_secrets: bool = False) -> None:
    for message in templates.check(source, allow_secrets=allow_secrets):
        ck.add(path, message)


# --- the flow --------------------------------------------------------------------------


def build_flow(ck: Checker, data: Any, *, source: str, version: int) -> Flow | None:
    """The whole definition -> Flow, or None when a problem was recorded."""
    top = _mapping(ck, data, (), "a flow definition")
    if top is None:
        return None
    _known_keys(ck, top, FLOW_KEYS, (), "a flow")
    flow_id = _text(ck, top, "id", (), hint="give the flow a stable id, e.g. id: order-to-crm")
    if flow_id is not None:
        flow_id = _identifier(ck, flow_id, ("id",), "flow id")
    name = top.get("name", flow_id)
    if "name" in top and not (isinstance(name, str) and name.strip()):
        ck.add(("name",), "must be non-empty text")
    status = _status(ck, top)
    trigger = _trigger(ck, top.get("trigger"), ("trigger",)) if "trigger" in top else None
    if "trigger" not in top:
        ck.add(("trigger",), "missing; say what starts the flow, e.g. trigger: {metric: Placed Order}")
    profile_filters = _conditions(ck, top.get("profile_filters", []), ("profile_filters",), on="profile")
    reentry = _reentry(ck, top.get("reentry"), ("reentry",))
    steps = _top_steps(ck, top)
    if ck.problems or flow_id is None or trigger is None or reentry is None:
        return None
    return Flow(id=flow_id, name=str(name), status=status, trigger=trigger, steps=steps,
                profile_filters=profile_filters, reentry=reentry, version=version, source=source,
                definition=top)


def _status(ck: Checker, top: dict[str, Any]) -> Any:
    if "status" not in top:
        ck.warn(("status",), "no status given, so the flow is a draft and does nothing; "
                             "add status: live (or manual to hold every request)")
        return "draft"
    status = top["status"]
    if status not in STATUSES:
        ck.add(("status",), f"must be one of {', '.join(STATUSES)}, got {status!r}")
        return "draft"
    return status


def _top_steps(ck: Checker, top: dict[str, Any]) -> tuple[Step, ...]:
    if "steps" not in top:
        ck.add(("steps",), "missing; a flow needs at least one step, e.g. a webhook")
        return ()
    items = _list(ck, top["steps"], ("steps",), "steps")
    if items is not None and not items:
        ck.add(("steps",), "is empty; add at least one webhook step")
    steps = _steps(ck, items or [], ("steps",), "steps")
    if not ck.problems and not any(_webhooks(steps)):
        ck.warn(("steps",), "no webhook step: this flow never sends anything")
    return steps


def _webhooks(steps: Sequence[Step]) -> list[WebhookStep]:
    found: list[WebhookStep] = []
    for step in steps:
        if isinstance(step, WebhookStep):
            found.append(step)
        elif isinstance(step, SplitStep):
            found += _webhooks(step.then) + _webhooks(step.else_)
    return found


# --- trigger ---------------------------------------------------------------------------


def _trigger(ck: Checker, value: Any, path: Path) -> Trigger | None:
    obj = _mapping(ck, value, path, "trigger")
    if obj is None:
        return None
    _refuse_property_change(ck, obj, path)
    kinds = [k for k in TRIGGER_KINDS if k in obj]
    if not kinds:
        if not any("propert" in str(k) and k != "date_property" for k in obj):
            ck.add(path, "needs one of metric, list, segment or date_property")
        return None
    if len(kinds) > 1:
        ck.add(path, f"has more than one kind ({', '.join(kinds)}); a flow has exactly one trigger")
        return None
    kind = kinds[0]
    on_event = kind != "date_property"
    if "filters" in obj and not on_event:
        ck.add((*path, "filters"), "date_property triggers have no triggering event; "
                                    "put conditions about the profile in profile_filters")
    filters = _conditions(ck, obj.get("filters", []), (*path, "filters"), on="event")
    return _trigger_of_kind(ck, kind, obj, path, filters)


def _refuse_property_change(ck: Checker, obj: dict[str, Any], path: Path) -> None:
    for key in obj:
        if "propert" in str(key) and key != "date_property":
            ck.add((*path, str(key)), PROPERTY_CHANGE)
    _known_keys(ck, {k: v for k, v in obj.items() if "propert" not in str(k) or k == "date_property"},
                TRIGGER_KEYS, path, "trigger")


def _trigger_of_kind(ck: Checker, kind: str, obj: dict[str, Any], path: Path,
                     filters: tuple[Condition, ...]) -> Trigger | None:
    if kind == "metric":
        metric = _text(ck, obj, "metric", path)
        if metric is None or not _trigger_metric_ok(ck, metric, (*path, "metric")):
            return None
        return Trigger(kind="metric", metric=metric, filters=filters)
    if kind in ("list", "segment"):
        ident = obj[kind]
        if isinstance(ident, bool) or not isinstance(ident, str | int) or str(ident).strip() == "":
            ck.add((*path, kind), f"must be the {kind} id (text), got {_type_name(ident)}")
            return None
        if kind == "list":
            return Trigger(kind="list", metric=SUBSCRIBED_TO_LIST, list_id=str(ident), filters=filters)
        return Trigger(kind="segment", metric=ADDED_TO_SEGMENT, segment_id=str(ident), filters=filters)
    date_property = _date_property(ck, obj["date_property"], (*path, "date_property"))
    return None if date_property is None else Trigger(kind="date_property", date_property=date_property)


def _trigger_metric_ok(ck: Checker, metric: str, path: Path) -> bool:
    folded = metric.strip().casefold()
    if folded in EMAIL_METRICS:
        ck.add(path, EMAIL_TRIGGER.format(metric))
        return False
    if "property" in folded and ("change" in folded or "update" in folded):
        ck.add(path, PROPERTY_CHANGE)
        return False
    return True


def _date_property(ck: Checker, value: Any, path: Path) -> DateProperty | None:
    obj = _mapping(ck, value, path, "date_property")
    if obj is None:
        return None
    _known_keys(ck, obj, DATE_PROPERTY_KEYS, path, "date_property")
    prop = _text(ck, obj, "property", path, hint="name the profile property holding the date, e.g. birthday")
    offset = _duration(ck, obj["offset"], (*path, "offset"), allow_negative=True) if "offset" in obj else 0
    at = _time_of_day(ck, obj.get("at", "09:00"), (*path, "at"))
    zone = _timezone(ck, obj.get("timezone", "UTC"), (*path, "timezone"))
    yearly = obj.get("yearly", True)
    if not isinstance(yearly, bool):
        ck.add((*path, "yearly"), f"must be true or false, got {yearly!r}")
    if None in (prop, offset, at, zone) or not isinstance(yearly, bool):
        return None
    return DateProperty(property=str(prop), offset_ms=int(offset or 0), at=str(at), timezone=str(zone),
                        yearly=yearly)


# --- conditions ------------------------------------------------------------------------


def _conditions(ck: Checker, value: Any, path: Path, *, on: str) -> tuple[Condition, ...]:
    items = _list(ck, value, path, "conditions")
    if items is None:
        return ()
    built = [_condition(ck, item, (*path, i), on=on) for i, item in enumerate(items)]
    return tuple(c for c in built if c is not None)


def _condition(ck: Checker, value: Any, path: Path, *, on: str) -> Condition | None:
    obj = _mapping(ck, value, path, "a condition")
    if obj is None:
        return None
    _known_keys(ck, obj, CONDITION_KEYS, path, "a condition")
    if "property" in obj and "metric" in obj:
        ck.add(path, "has both property and metric; a condition is about one property "
                     "or about how often a metric happened")
        return None
    if "metric" in obj:
        return _history_condition(ck, obj, path, on=on)
    if "property" not in obj:
        ck.add(path, "needs property (a property condition) or metric (a history condition)")
        return None
    return _property_condition(ck, obj, path, on=on)


def _op(ck: Checker, obj: dict[str, Any], path: Path, ops: frozenset[str], other: frozenset[str],
        what: str) -> str | None:
    op = obj.get("op")
    if isinstance(op, str) and op in ops:
        return op
    if op is None:
        ck.add((*path, "op"), f"missing; {what} conditions take op: {', '.join(sorted(ops))}")
    elif isinstance(op, str) and op in other:
        ck.add((*path, "op"), f"{op} belongs to the other kind of condition; {what} conditions take "
                               f"{', '.join(sorted(ops))}")
    else:
        close = difflib.get_close_matches(str(op), sorted(ops), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        ck.add((*path, "op"), f"unknown op {op!r}; {hint}{what} conditions take {', '.join(sorted(ops))}")
    return None


def _property_condition(ck: Checker, obj: dict[str, Any], path: Path, *, on: str) -> Condition | None:
    prop = _text(ck, obj, "property", path)
    op = _op(ck, obj, path, PROPERTY_OPS, HISTORY_OPS, "property")
    for key in ("since", "within"):
        if key in obj:
            ck.add((*path, key), f"{key} belongs to history conditions (with metric), not to property ones")
    if prop is None or op is None or not _value_fits(ck, op, obj, path):
        return None
    return Condition(op=op, property=prop, value=obj.get("value"), on=on)  # type: ignore[arg-type]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _value_fits(ck: Checker, op: str, obj: dict[str, Any], path: Path) -> bool:
    """The value that each op needs: none for exists, a list for in, a number or date for gt ..."""
    vpath = (*path, "value")
    if op in ("exists", "not_exists"):
        if "value" in obj:
            ck.add(vpath, f"{op} takes no value; remove it")
            return False
        return True
    if "value" not in obj:
        ck.add(vpath, f"missing; {op} compares the property with a value")
        return False
    value = obj["value"]
    message = _value_problem(op, value)
    if message:
        ck.add(vpath, message)
        return False
    return True


def _value_problem(op: str, value: Any) -> str | None:
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            return f"{op} needs a non-empty list of values, e.g. [US, CA]"
        return None
    if value is None:
        return "a value of null never matches; use op: exists or not_exists"
    if not _is_scalar(value):
        return f"{op} compares with one value (text, number or true/false); for several use in / not_in"
    if op in ("gt", "gte", "lt", "lte") and not _orderable(value):
        return f"{op} compares numbers or dates; {value!r} is neither (write dates as ISO-8601)"
    return None


def _orderable(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        parse_iso_ms(str(value))
        return True
    except ValueError:
        return False


def _history_condition(ck: Checker, obj: dict[str, Any], path: Path, *, on: str) -> Condition | None:
    if on == "event":
        ck.add(path, "history conditions (metric, op: count_...) are about the profile, not the "
                     "triggering event; move this one to profile_filters or a profile split")
        return None
    metric = _text(ck, obj, "metric", path)
    if metric is not None and metric.strip().casefold() in EMAIL_METRICS:
        ck.add((*path, "metric"), f"Flowhook sees storefront events only; '{metric}' never happens here")
    op = _op(ck, obj, path, HISTORY_OPS, PROPERTY_OPS, "history")
    value = obj.get("value")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        ck.add((*path, "value"), f"must be a whole number of events (0 or more), got {value!r}")
        return None
    since, within_ms = _window(ck, obj, path)
    if metric is None or op is None or since is False:
        return None
    return Condition(op=op, metric=metric, value=value, since=since or None, within_ms=within_ms)


def _window(ck: Checker, obj: dict[str, Any], path: Path) -> tuple[Any, int | None]:
    """(since, within_ms); since is False when the window is wrong."""
    if "since" in obj and "within" in obj:
        ck.add(path, "has both since and within; keep one")
        return False, None
    if "since" in obj and obj["since"] != "flow_start":
        ck.add((*path, "since"), f"must be flow_start, got {obj['since']!r}; for a period use within: 30d")
        return False, None
    if "within" in obj:
        within = _duration(ck, obj["within"], (*path, "within"))
        return (False, None) if within is None else (None, within)
    return obj.get("since"), None


def _reentry(ck: Checker, value: Any, path: Path) -> Reentry | None:
    if value is None:
        return Reentry()
    obj = {"mode": value} if isinstance(value, str) else _mapping(ck, value, path, "reentry")
    if obj is None:
        return None
    _known_keys(ck, obj, ("mode", "period"), path, "reentry")
    mode = obj.get("mode", "once")
    if mode not in REENTRY_MODES:
        ck.add((*path, "mode"), f"must be one of {', '.join(REENTRY_MODES)}, got {mode!r}")
        return None
    if mode != "once_per":
        if "period" in obj:
            ck.add((*path, "period"), f"period is only for mode once_per, not {mode}")
        return Reentry(mode=mode)
    if "period" not in obj:
        ck.add((*path, "period"), "missing; once_per needs a period, e.g. period: 30d")
        return None
    period = _duration(ck, obj["period"], (*path, "period"))
    return None if period is None else Reentry(mode="once_per", period_ms=period)


# --- steps -----------------------------------------------------------------------------


def _steps(ck: Checker, items: list[Any], path: Path, id_prefix: str) -> tuple[Step, ...]:
    built = [_step(ck, item, (*path, i), f"{id_prefix}[{i}]") for i, item in enumerate(items)]
    return tuple(s for s in built if s is not None)


def _step(ck: Checker, value: Any, path: Path, derived_id: str) -> Step | None:
    obj = _mapping(ck, value, path, "a step")
    if obj is None:
        return None
    kinds = [k for k in ("delay", "split", "webhook") if k in obj]
    _known_keys(ck, obj, ("delay", "split", "webhook", "id"), path, "a step")
    if len(kinds) != 1:
        found = f" (found {', '.join(kinds)})" if kinds else ""
        ck.add(path, f"a step needs exactly one of delay, split or webhook{found}")
        return None
    if kinds[0] == "webhook" and "id" in obj:
        ck.add((*path, "id"), "put the webhook's id inside webhook: (webhook: {id: ..., url: ...})")
    step_id = _step_id(ck, obj, path, derived_id)
    builders: dict[str, Callable[..., Step | None]] = {
        "delay": _delay, "split": _split, "webhook": _webhook,
    }
    return builders[kinds[0]](ck, obj[kinds[0]], (*path, kinds[0]), step_id)


def _step_id(ck: Checker, obj: dict[str, Any], path: Path, derived_id: str) -> str:
    inner = obj.get("split") if isinstance(obj.get("split"), dict) else {}
    given = obj.get("id", inner.get("id") if isinstance(inner, dict) else None)
    if given is None or "webhook" in obj:
        return derived_id
    where = (*path, "id") if "id" in obj else (*path, "split", "id")
    ident = _identifier(ck, given, where, "step id")
    if ident is None:
        return derived_id
    _claim_id(ck, ident, where)
    return ident


def _claim_id(ck: Checker, ident: str, path: Path) -> None:
    if ident in ck.step_ids:
        ck.add(path, f"step id {ident!r} is used twice (first at {field_name(ck.step_ids[ident])}); "
                     "step ids must be unique within a flow")
    else:
        ck.step_ids[ident] = path


def _delay(ck: Checker, value: Any, path: Path, step_id: str) -> DelayStep | None:
    if isinstance(value, str):
        ms = _duration(ck, value, path)
        return None if ms is None else DelayStep(id=step_id, duration_ms=ms)
    obj = _mapping(ck, value, path, "delay (a duration such as 2d, or {until: \"09:00\", timezone: UTC})")
    if obj is None:
        return None
    _known_keys(ck, obj, ("until", "timezone"), path, "delay")
    if "until" not in obj:
        ck.add((*path, "until"), "missing; write delay: 2d, or delay: {until: \"09:00\", timezone: UTC}")
        return None
    until = _time_of_day(ck, obj["until"], (*path, "until"))
    zone = _timezone(ck, obj.get("timezone", "UTC"), (*path, "timezone"))
    if until is None or zone is None:
        return None
    return DelayStep(id=step_id, until=until, timezone=zone)


def _split(ck: Checker, value: Any, path: Path, step_id: str) -> SplitStep | None:
    obj = _mapping(ck, value, path, "split")
    if obj is None:
        return None
    _known_keys(ck, obj, SPLIT_KEYS, path, "split")
    on = obj.get("on", "profile")
    if on not in ("profile", "event"):
        ck.add((*path, "on"), f"must be profile or event, got {on!r}")
        on = "profile"
    if "if" not in obj:
        ck.add((*path, "if"), "missing; a split needs conditions, "
                              "e.g. if: [{property: vip, op: eq, value: true}]")
    conditions = _conditions(ck, obj.get("if", []), (*path, "if"), on=on)
    if isinstance(obj.get("if"), list) and not obj["if"]:
        ck.add((*path, "if"), "is empty; a split needs at least one condition")
    branches = []
    for key in ("then", "else"):
        items = _list(ck, obj.get(key, []), (*path, key), key) or []
        branches.append(_steps(ck, items, (*path, key), f"{step_id}.{key}"))
    return SplitStep(id=step_id, conditions=conditions, on=on, then=branches[0], else_=branches[1])


# --- webhook ---------------------------------------------------------------------------


def _webhook(ck: Checker, value: Any, path: Path, _derived_id: str) -> WebhookStep | None:
    obj = _mapping(ck, value, path, "webhook")
    if obj is None:
        return None
    _known_keys(ck, obj, WEBHOOK_KEYS, path, "webhook")
    step_id = _text(ck, obj, "id", path, hint="give each webhook a stable id, e.g. id: crm-lead "
                                              "(delivery ids are derived from it)")
    if step_id is not None:
        step_id = _identifier(ck, step_id, (*path, "id"), "webhook id")
        if step_id is not None:
            _claim_id(ck, step_id, (*path, "id"))
    url = _url(ck, obj, path)
    method = _method(ck, obj.get("method", "POST"), (*path, "method"))
    headers = _headers(ck, obj.get("headers", {}), (*path, "headers"))
    body = _body(ck, obj.get("body"), (*path, "body"))
    options = _options(ck, obj, path)
    signing = _signing(ck, obj.get("signing_secret"), (*path, "signing_secret"))
    if None in (step_id, url, method, headers, options, signing) or body is False:
        return None
    return WebhookStep(id=str(step_id), url=str(url), method=str(method), headers=dict(headers or {}),
                       body=body, signing_secrets=tuple(signing or ()), **(options or {}))


def _url(ck: Checker, obj: dict[str, Any], path: Path) -> str | None:
    url = _text(ck, obj, "url", path, hint="where to send, e.g. url: https://api.example.com/hook")
    if url is None:
        return None
    upath = (*path, "url")
    _template(ck, url, upath)
    schemes = ("https://", "http://") if ck.allow_http else ("https://",)
    if not url.lower().startswith(schemes):
        hint = "" if ck.allow_http else (" (http:// only when the operator allows it: FLOWHOOK_ALLOW_HTTP=1 "
                                         "or --allow-http)")
        ck.add(upath, f"must start with https://{hint}, got {url[:60]!r}")
        return None
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if templates.has_tags(authority):
        ck.add(upath, "the host must be written literally; templates may appear in the path and query only")
        return None
    literal = _ANY_TAG.sub("x", url)
    parts = urlsplit(literal)
    if not parts.hostname or any(ch.isspace() for ch in literal):
        ck.add(upath, f"{url[:80]!r} is not a valid URL")
        return None
    if parts.username or parts.password:
        ck.add(upath, "must not carry credentials; send them in a header with {{ secrets.NAME }}")
        return None
    return url


def _method(ck: Checker, value: Any, path: Path) -> str | None:
    if isinstance(value, str) and value.upper() in METHODS:
        return value.upper()
    ck.add(path, f"must be one of {', '.join(METHODS)}, got {value!r}")
    return None


def _headers(ck: Checker, value: Any, path: Path) -> dict[str, str] | None:
    obj = _mapping(ck, value, path, "headers")
    if obj is None:
        return None
    seen: set[str] = set()
    ok = True
    for name, header_value in obj.items():
        hpath = (*path, str(name))
        ok = _header(ck, str(name), header_value, hpath, seen) and ok
    return {str(k): v for k, v in obj.items()} if ok else None


def _header(ck: Checker, name: str, value: Any, path: Path, seen: set[str]) -> bool:
    if not HEADER_NAME.match(name):
        ck.add(path, f"header name {name!r} has characters a header name cannot have "
                     "(spaces, colons, CR/LF, ...)")
        return False
    if name.lower() in RESERVED_HEADERS:
        ck.add(path, f"{name} is set by Flowhook itself and cannot be overridden; remove it")
        return False
    if name.lower() in seen:
        ck.add(path, f"header {name} is given twice (names ignore case)")
        return False
    seen.add(name.lower())
    if not isinstance(value, str):
        ck.add(path, f"header values are text; quote it, got {_type_name(value)}")
        return False
    if "\r" in value or "\n" in value:
        ck.add(path, "header values cannot contain line breaks")
        return False
    if is_secret_header(value):
        return _secret_header(ck, value, path)
    before = len(ck.problems)
    _template(ck, value, path)
    return len(ck.problems) == before


def _secret_header(ck: Checker, value: str, path: Path) -> bool:
    rest = SECRET_TAG.sub("", value)
    if templates.has_tags(rest) or "}}" in rest or "secrets." in rest:
        ck.add(path, "a header that uses secrets may hold only literal text and {{ secrets.NAME }} tags "
                     "(NAME: letters, digits, _); put other values in a separate header")
        return False
    return True


def _signing(ck: Checker, value: Any, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    names = []
    for i, item in enumerate(items):
        match = SECRET_TAG.fullmatch(item.strip()) if isinstance(item, str) else None
        if match is None:
            where = (*path, i) if isinstance(value, list) else path
            ck.add(where, "must be \"{{ secrets.NAME }}\" (or a list of them), naming a whsec_ secret "
                          "set as FLOWHOOK_SECRET_NAME; the secret itself never goes in a flow file")
            return None
        names.append(match.group(1))
    if not names:
        ck.add(path, "is an empty list; remove it or name at least one secret")
        return None
    return tuple(names)


def _body(ck: Checker, value: Any, path: Path) -> Any:
    """The body as given (False when wrong): object bodies checked leaf by leaf."""
    if value is None:
        return None
    if isinstance(value, str):
        _template(ck, value, path)
        ck.warn(path, suggest_object_body(value))
        return value
    if not isinstance(value, dict | list):
        ck.add(path, f"body must be a mapping, a list or text, got {_type_name(value)}")
        return False
    before = len(ck.problems)
    _body_leaves(ck, value, path)
    return value if len(ck.problems) == before else False


def _body_leaves(ck: Checker, node: Any, path: Path) -> None:
    if isinstance(node, dict):
        for key, child in node.items():
            if templates.has_tags(str(key)):
                ck.warn((*path, str(key)), "keys are sent as written: templates work in values only")
            _body_leaves(ck, child, (*path, str(key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _body_leaves(ck, child, (*path, i))
    elif isinstance(node, str):
        _template(ck, node, path)


def _options(ck: Checker, obj: dict[str, Any], path: Path) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    ok = True
    if "timeout" in obj:
        timeout = _duration(ck, obj["timeout"], (*path, "timeout"))
        if timeout is not None and timeout > MAX_TIMEOUT_MS:
            ck.add((*path, "timeout"), "must be at most 5m")
            timeout = None
        ok = ok and timeout is not None
        options["timeout_ms"] = timeout
    if "max_age" in obj:
        options["max_age_ms"] = _duration(ck, obj["max_age"], (*path, "max_age"))
        ok = ok and options["max_age_ms"] is not None
    if "retry" in obj:
        options["retry_ms"] = _retry(ck, obj["retry"], (*path, "retry"))
        ok = ok and options["retry_ms"] is not None
    if "rate_limit" in obj:
        rate = obj["rate_limit"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            ck.add((*path, "rate_limit"), f"must be a number of requests per second above 0, got {rate!r}")
            ok = False
        else:
            options["rate_limit"] = float(rate)
    return options if ok else None


def _retry(ck: Checker, value: Any, path: Path) -> tuple[int, ...] | None:
    items = _list(ck, value, path, "retry (the delays between tries, e.g. [1s, 5s])")
    if items is None:
        return None
    delays = [_duration(ck, item, (*path, i)) for i, item in enumerate(items)]
    if len(delays) > 50:
        ck.add(path, "at most 50 retries")
        return None
    return None if None in delays else tuple(d for d in delays if d is not None)


# --- string bodies ---------------------------------------------------------------------

_ANY_TAG: Final = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def suggest_object_body(body: str) -> str:
    """The warning for a text body, with the object form when it can be worked out."""
    base = ("body is text, so it renders as text and must be valid JSON afterwards "
            "(a quote in a value breaks it); write it as a mapping so values are escaped by construction")
    suggestion = object_form(body)
    if suggestion is None:
        return base
    import orjson

    return f"{base}: body: {orjson.dumps(suggestion).decode()}"


def object_form(body: str) -> Any:
    """A text body with `{{ }}` tags rewritten as an object body, or None if that cannot be done.

    A tag inside a JSON string stays inside that string leaf; a bare tag becomes a lone-tag
    leaf, which keeps its value's type, as the text form intended.
    """
    tags: list[str] = []
    out: list[str] = []
    in_string = False
    position = 0
    for match in _ANY_TAG.finditer(body):
        literal = body[position:match.start()]
        in_string = _track_quotes(literal, in_string)
        out.append(literal)
        if match.group(0).startswith("{%"):
            return None
        tags.append(match.group(0))
        marker = f"\u0000{len(tags) - 1}\u0000"
        out.append(marker if in_string else f'"{marker}"')
        position = match.end()
    out.append(body[position:])
    import orjson

    try:
        data = orjson.loads("".join(out).replace("\u0000", "\\u0000"))
    except orjson.JSONDecodeError:
        return None
    return _restore(data, tags)


def _track_quotes(literal: str, in_string: bool) -> bool:
    escaped = False
    for char in literal:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = in_string
        elif char == '"':
            in_string = not in_string
    return in_string


def _restore(node: Any, tags: list[str]) -> Any:
    if isinstance(node, str):
        return re.sub("\u0000(\\d+)\u0000", lambda m: tags[int(m.group(1))], node)
    if isinstance(node, dict):
        return {k: _restore(v, tags) for k, v in node.items()}
    if isinstance(node, list):
        return [_restore(v, tags) for v in node]
    return node
