"""A flow definition (plain data) -> the flow model, collecting every problem on the way.

Each builder takes a `Checker` (where problems go, with the path of the field), the raw
value and its path, and returns a model object or None. Builders never raise on bad data:
they record a problem that says how to fix it and carry on, so one run reports everything.
Webhook steps are checked in `processor.flows.build_webhook`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from processor.clock import parse_iso_ms
from processor.flows.build_webhook import build_webhook
from processor.flows.checks import (
    Checker,
    Path,
    as_list,
    claim_id,
    duration,
    identifier,
    known_keys,
    mapping,
    text_field,
    time_of_day,
    timezone,
    type_name,
)
from processor.flows.delays import WEEKDAYS
from processor.flows.filters import HISTORY_OPS, PROPERTY_OPS
from processor.flows.model import (
    ADDED_TO_SEGMENT,
    PROFILE_TIMEZONE,
    SUBSCRIBED_TO_LIST,
    Condition,
    DateProperty,
    DelayStep,
    Flow,
    Reentry,
    ReentryMode,
    SplitStep,
    Step,
    Trigger,
    WebhookStep,
)

__all__ = ["build_flow"]

STATUSES: Final = ("draft", "manual", "live")
REENTRY_MODES: Final = ("once", "always", "once_per")
TRIGGER_KINDS: Final = ("metric", "list", "segment", "date_property")
EMAIL_METRICS: Final = frozenset({"received email", "opened email"})
FLOW_KEYS: Final = ("id", "name", "description", "status", "trigger", "profile_filters", "reentry", "steps")
TRIGGER_KEYS: Final = (*TRIGGER_KINDS, "filters")
DATE_PROPERTY_KEYS: Final = ("property", "offset", "at", "timezone", "yearly")
CONDITION_KEYS: Final = ("property", "metric", "op", "value", "since", "within")
SPLIT_KEYS: Final = ("if", "then", "else", "on", "id")
STEP_KINDS: Final = ("delay", "split", "trigger_split", "webhook")
DELAY_KEYS: Final = (
    "minutes", "hours", "days", "duration", "until", "weekdays", "timezone", "fallback_timezone",
)
DELAY_UNITS: Final = {"minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}
DELAY_FORMS: Final = ("write delay: 2d, delay: {hours: 3}, "
                      "delay: {days: 1, until: \"09:00\", timezone: profile} or delay: {until: \"09:00\"}")

EMAIL_TRIGGER: Final = (
    "Flowhook sees storefront events only, not email engagement, so '{}' can never start a flow; "
    "trigger on a storefront metric such as Placed Order"
)
PROPERTY_CHANGE: Final = (
    "flows cannot start on a profile property change; trigger on the event that changes it, "
    "or use date_property for a date stored on the profile"
)


# --- the flow --------------------------------------------------------------------------


def build_flow(ck: Checker, data: Any, *, source: str, version: int) -> Flow | None:
    """The whole definition -> Flow, or None when a problem was recorded."""
    top = mapping(ck, data, (), "a flow definition")
    if top is None:
        return None
    known_keys(ck, top, FLOW_KEYS, (), "a flow")
    flow_id = text_field(ck, top, "id", (), hint="give the flow a stable id, e.g. id: order-to-crm")
    if flow_id is not None:
        flow_id = identifier(ck, flow_id, ("id",), "flow id")
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
    items = as_list(ck, top["steps"], ("steps",), "steps")
    if items is not None and not items:
        ck.add(("steps",), "is empty; add at least one webhook step")
    steps = _steps(ck, items or [], ("steps",), "steps")
    if not ck.problems and not any(_webhooks(steps)):
        ck.warn(("steps",), "no webhook step: this flow never sends anything")
    for where in _trailing_delays(items or [], ("steps",)):
        ck.warn(where, "nothing follows this delay, so it is skipped (as Klaviyo skips a delay at the "
                       "end of a flow); remove it, or add the step it should wait for")
    return steps


def _trailing_delays(items: list[Any], path: Path) -> list[Path]:
    """Paths of delays with nothing after them: at the end of the flow, or of a final split's branch."""
    if not items or not isinstance(items[-1], dict):
        return []
    last, where = items[-1], (*path, len(items) - 1)
    if "delay" in last:
        return [(*where, "delay")]
    found: list[Path] = []
    for kind in ("split", "trigger_split"):
        split = last.get(kind)
        if isinstance(split, dict):
            for branch in ("then", "else"):
                if isinstance(split.get(branch), list):
                    found += _trailing_delays(split[branch], (*where, kind, branch))
    return found


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
    obj = mapping(ck, value, path, "trigger")
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
    known_keys(ck, {k: v for k, v in obj.items() if "propert" not in str(k) or k == "date_property"},
                TRIGGER_KEYS, path, "trigger")


def _trigger_of_kind(ck: Checker, kind: str, obj: dict[str, Any], path: Path,
                     filters: tuple[Condition, ...]) -> Trigger | None:
    if kind == "metric":
        metric = text_field(ck, obj, "metric", path)
        if metric is None or not _trigger_metric_ok(ck, metric, (*path, "metric")):
            return None
        return Trigger(kind="metric", metric=metric, filters=filters)
    if kind in ("list", "segment"):
        ident = obj[kind]
        if isinstance(ident, bool) or not isinstance(ident, str | int) or str(ident).strip() == "":
            ck.add((*path, kind), f"must be the {kind} id (text), got {type_name(ident)}")
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
    obj = mapping(ck, value, path, "date_property")
    if obj is None:
        return None
    known_keys(ck, obj, DATE_PROPERTY_KEYS, path, "date_property")
    prop = text_field(ck, obj, "property", path,
                      hint="name the profile property holding the date, e.g. birthday")
    offset = duration(ck, obj["offset"], (*path, "offset"), allow_negative=True) if "offset" in obj else 0
    at = time_of_day(ck, obj.get("at", "09:00"), (*path, "at"))
    zone = timezone(ck, obj.get("timezone", "UTC"), (*path, "timezone"))
    yearly = obj.get("yearly", True)
    if not isinstance(yearly, bool):
        ck.add((*path, "yearly"), f"must be true or false, got {yearly!r}")
    if None in (prop, offset, at, zone) or not isinstance(yearly, bool):
        return None
    return DateProperty(property=str(prop), offset_ms=int(offset or 0), at=str(at), timezone=str(zone),
                        yearly=yearly)


# --- conditions ------------------------------------------------------------------------


def _conditions(ck: Checker, value: Any, path: Path, *, on: str) -> tuple[Condition, ...]:
    items = as_list(ck, value, path, "conditions")
    if items is None:
        return ()
    built = [_condition(ck, item, (*path, i), on=on) for i, item in enumerate(items)]
    return tuple(c for c in built if c is not None)


def _condition(ck: Checker, value: Any, path: Path, *, on: str) -> Condition | None:
    obj = mapping(ck, value, path, "a condition")
    if obj is None:
        return None
    known_keys(ck, obj, CONDITION_KEYS, path, "a condition")
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
    prop = text_field(ck, obj, "property", path)
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
    metric = text_field(ck, obj, "metric", path)
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
        within = duration(ck, obj["within"], (*path, "within"))
        return (False, None) if within is None else (None, within)
    return obj.get("since"), None


def _reentry(ck: Checker, value: Any, path: Path) -> Reentry | None:
    if value is None:
        return Reentry()
    obj = {"mode": value} if isinstance(value, str) else mapping(ck, value, path, "reentry")
    if obj is None:
        return None
    known_keys(ck, obj, ("mode", "period"), path, "reentry")
    mode = obj.get("mode", "once")
    if mode not in REENTRY_MODES:
        ck.add((*path, "mode"), f"must be one of {', '.join(REENTRY_MODES)}, got {mode!r}")
        return None
    if mode != "once_per":
        if "period" in obj:
            ck.add((*path, "period"), f"period is only for mode once_per, not {mode}")
        return Reentry(mode=cast(ReentryMode, mode))  # checked against REENTRY_MODES above
    if "period" not in obj:
        ck.add((*path, "period"), "missing; once_per needs a period, e.g. period: 30d")
        return None
    period = duration(ck, obj["period"], (*path, "period"))
    return None if period is None else Reentry(mode="once_per", period_ms=period)


# --- steps -----------------------------------------------------------------------------


def _steps(ck: Checker, items: list[Any], path: Path, id_prefix: str) -> tuple[Step, ...]:
    built = [_step(ck, item, (*path, i), f"{id_prefix}[{i}]") for i, item in enumerate(items)]
    return tuple(s for s in built if s is not None)


def _step(ck: Checker, value: Any, path: Path, derived_id: str) -> Step | None:
    obj = mapping(ck, value, path, "a step")
    if obj is None:
        return None
    kinds = [k for k in STEP_KINDS if k in obj]
    known_keys(ck, obj, (*STEP_KINDS, "id"), path, "a step")
    if len(kinds) != 1:
        found = f" (found {', '.join(kinds)})" if kinds else ""
        ck.add(path, f"a step needs exactly one of delay, split, trigger_split or webhook{found}")
        return None
    if kinds[0] == "webhook" and "id" in obj:
        ck.add((*path, "id"), "put the webhook's id inside webhook: (webhook: {id: ..., url: ...})")
    step_id = _step_id(ck, obj, path, derived_id)
    builders: dict[str, Callable[..., Step | None]] = {
        "delay": _delay, "split": _split, "trigger_split": _trigger_split, "webhook": build_webhook,
    }
    return builders[kinds[0]](ck, obj[kinds[0]], (*path, kinds[0]), step_id)


def _step_id(ck: Checker, obj: dict[str, Any], path: Path, derived_id: str) -> str:
    kind = "trigger_split" if "trigger_split" in obj else "split"
    inner = obj.get(kind) if isinstance(obj.get(kind), dict) else {}
    given = obj.get("id", inner.get("id") if isinstance(inner, dict) else None)
    if given is None or "webhook" in obj:
        return derived_id
    where = (*path, "id") if "id" in obj else (*path, kind, "id")
    ident = identifier(ck, given, where, "step id")
    if ident is None:
        return derived_id
    claim_id(ck, ident, where)
    return ident


def _delay(ck: Checker, value: Any, path: Path, step_id: str) -> DelayStep | None:
    if isinstance(value, str):
        ms = duration(ck, value, path)
        return None if ms is None else DelayStep(id=step_id, duration_ms=ms)
    obj = mapping(ck, value, path, "delay (a duration such as 2d, or {until: \"09:00\", timezone: UTC})")
    if obj is None:
        return None
    known_keys(ck, obj, DELAY_KEYS, path, "delay")
    units = [u for u in (*DELAY_UNITS, "duration") if u in obj]
    if len(units) > 1:
        ck.add(path, f"has {' and '.join(units)}; a delay counts in one unit, as in Klaviyo")
        return None
    if not units and "until" not in obj:
        ck.add(path, f"says neither how long nor until when; {DELAY_FORMS}")
        return None
    if "until" in obj and units and units[0] != "days":
        ck.add((*path, "until"), f"until goes with days (N calendar days, then until a time of day), "
                                 f"not with {units[0]}; {DELAY_FORMS}")
        return None
    if units == ["duration"]:
        amount = duration(ck, obj["duration"], (*path, "duration"))
    else:
        amount = _delay_amount(ck, obj, units[0], path) if units else 0
    until = time_of_day(ck, obj["until"], (*path, "until")) if "until" in obj else None
    zone = _delay_zone(ck, obj.get("timezone", "UTC"), (*path, "timezone"))
    fallback = timezone(ck, obj.get("fallback_timezone", "UTC"), (*path, "fallback_timezone"))
    weekdays = _weekdays(ck, obj["weekdays"], (*path, "weekdays")) if "weekdays" in obj else ()
    if None in (amount, zone, fallback, weekdays) or ("until" in obj and until is None):
        return None
    assert amount is not None and zone is not None and fallback is not None and weekdays is not None
    if until is not None:
        return DelayStep(id=step_id, until=until, days=amount, timezone=zone, weekdays=weekdays,
                         fallback_timezone=fallback)
    return DelayStep(id=step_id, duration_ms=amount * DELAY_UNITS.get(units[0], 1), timezone=zone,
                     weekdays=weekdays, fallback_timezone=fallback)


def _delay_amount(ck: Checker, obj: dict[str, Any], unit: str, path: Path) -> int | None:
    amount = obj[unit]
    least = 0 if unit == "days" and "until" in obj else 1
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < least or amount > 3650 * 24 * 60:
        ck.add((*path, unit), f"must be a whole number of {unit} ({least} or more), got {amount!r}")
        return None
    return amount


def _delay_zone(ck: Checker, value: Any, path: Path) -> str | None:
    if value == PROFILE_TIMEZONE:
        return PROFILE_TIMEZONE
    return timezone(ck, value, path)


def _weekdays(ck: Checker, value: Any, path: Path) -> tuple[int, ...] | None:
    items = as_list(ck, value, path, "weekdays")
    if items is None:
        return None
    days: set[int] = set()
    for i, item in enumerate(items):
        name = str(item).strip().lower()
        match = [n for n, full in enumerate(WEEKDAYS) if name in (full, full[:3])]
        if not match:
            ck.add((*path, i), f"{item!r} is not a weekday; write monday ... sunday (or mon ... sun)")
            return None
        days.add(match[0])
    if not days:
        ck.add(path, "is empty; name at least one weekday, or remove weekdays")
        return None
    return tuple(sorted(days))


def _trigger_split(ck: Checker, value: Any, path: Path, step_id: str) -> SplitStep | None:
    """Klaviyo's trigger split: a split on the triggering event's properties."""
    obj = mapping(ck, value, path, "trigger_split")
    if obj is None:
        return None
    if "on" in obj:
        ck.add((*path, "on"), "a trigger_split is always on the triggering event; remove on")
        return None
    return _split(ck, {**obj, "on": "event"}, path, step_id)


def _split(ck: Checker, value: Any, path: Path, step_id: str) -> SplitStep | None:
    obj = mapping(ck, value, path, "split")
    if obj is None:
        return None
    known_keys(ck, obj, SPLIT_KEYS, path, "split")
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
        items = as_list(ck, obj.get(key, []), (*path, key), key) or []
        branches.append(_steps(ck, items, (*path, key), f"{step_id}.{key}"))
    return SplitStep(id=step_id, conditions=conditions, on=on, then=branches[0], else_=branches[1])
