"""`flowhook flows import`: a flow definition exported from Klaviyo's API -> a Flowhook flow.

Klaviyo's Flows API returns a flow's `definition` (with `additional-fields[flow]=definition`):
`triggers`, `profile_filter`, `reentry_criteria`, `entry_action_id` and `actions`, each
action linked to the next by id (`links.next`, or `next_if_true` / `next_if_false` for
splits). `convert` walks the actions from the entry action, maps what maps (see MAPPING, the
table docs/klaviyo.md shows) and notes everything it skips or cannot carry over, so the
report says exactly what differs from the flow in Klaviyo. Pure: no files, no Kafka.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

MAPPING: Final = (
    ("trigger metric", "trigger: {metric: NAME} (name from --metric ID=NAME, else the id)"),
    ("trigger list / segment", "trigger: {list: ID} / {segment: ID}"),
    ("trigger_filter (metric-property conditions)", "trigger.filters"),
    ("profile_filter (profile-property, profile-metric count)", "profile_filters"),
    ("reentry_criteria alltime 1 / 0, N day|hour|week", "reentry once / always / once_per Nd|Nh|7Nd"),
    (
        "send-webhook (url, headers, body; action status)",
        "webhook step (text body as pasted; secret-like "
        "header values become {{ secrets.NAME }}; a manual action makes the flow manual)",
    ),
    (
        "time-delay (minutes/hours/days, delay_until_time, weekdays, timezone)",
        "delay: {minutes|hours|days: N, until, weekdays, timezone: profile|IANA}",
    ),
    ("conditional-split (profile_filter)", "split: {if, then, else}"),
    ("trigger-split (trigger_filter)", "trigger_split: {if, then, else}"),
    (
        "send-email, send-sms, send-push-notification, send-whatsapp, send-internal-alert, update-profile, "
        "list-update, ab-test",
        "skipped (reported); the flow goes on with the next action",
    ),
    (
        "other actions and filters (date triggers, multi-branch splits, regex, dates, ...)",
        "not imported (reported)",
    ),
)
SKIPPED_ACTIONS: Final = frozenset(
    {
        "send-email",
        "send-sms",
        "send-push-notification",
        "send-whatsapp",
        "send-internal-alert",
        "update-profile",
        "list-update",
        "ab-test",
        "content-experiment",
    }
)
FLOW_STATUSES: Final = {"live": "live", "manual": "manual", "draft": "draft"}
STRING_OPS: Final = {
    "equals": "eq",
    "not-equals": "ne",
    "contains": "contains",
    "not-contains": "not_contains",
    "in": "in",
    "not-in": "not_in",
}
NUMERIC_OPS: Final = {
    "equals": "eq",
    "not-equals": "ne",
    "greater-than": "gt",
    "greater-than-or-equal": "gte",
    "less-than": "lt",
    "less-than-or-equal": "lte",
}
EXISTENCE_OPS: Final = {"is-set": "exists", "not-set": "not_exists"}
UNIT_SUFFIX: Final = {"day": "d", "hour": "h", "week": "w"}
SECRET_HEADER: Final = re.compile(r"auth|key|token|secret|signature|password|cookie", re.IGNORECASE)
BRANCHING_ACTIONS: Final = frozenset({"multi-branch-split", "action-output-split"})
PROPERTY_WRAPPER: Final = re.compile(r"""^properties\s*(?:\[\s*['"](.+)['"]\s*\]|\.(.+))$""")


@dataclass
class Imported:
    """The converted definition and the report: what was skipped, what could not be imported."""

    definition: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # "skipped: ..." / "not imported: ..." / "note: ..."
    webhooks: int = 0
    trigger_ok: bool = False

    @property
    def usable(self) -> bool:
        """Something to run remains: a trigger and at least one webhook step."""
        return self.trigger_ok and self.webhooks > 0


def unwrap(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flow attributes with `id`, definition) from a Get Flow response, its `data`, or a bare definition."""
    if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping):
        data = data["data"]
    if not isinstance(data, Mapping):
        return {}, {}
    attributes = (
        dict(data.get("attributes") or {}) if isinstance(data.get("attributes"), Mapping) else dict(data)
    )
    if "id" in data and "id" not in attributes:
        attributes["id"] = data["id"]
    definition = attributes.get("definition") if isinstance(attributes.get("definition"), Mapping) else data
    return attributes, dict(definition) if isinstance(definition, Mapping) else {}


def convert(
    data: Any, *, metric_names: Mapping[str, str] | None = None, flow_id: str | None = None
) -> Imported:
    """A Klaviyo flow (as exported) -> Imported (a Flowhook definition and the report)."""
    attributes, definition = unwrap(data)
    converter = _Converter(dict(metric_names or {}))
    out = converter.flow(attributes, definition, flow_id)
    return Imported(out, converter.notes, converter.webhooks, converter.trigger_ok)


class _Converter:
    def __init__(self, metric_names: dict[str, str]) -> None:
        self.metric_names = metric_names
        self.notes: list[str] = []
        self.webhooks = 0
        self.trigger_ok = False
        self.manual_actions: list[str] = []
        self.secret_names: set[str] = set()

    # --- the flow ------------------------------------------------------------------------

    def flow(
        self, attributes: dict[str, Any], definition: dict[str, Any], flow_id: str | None
    ) -> dict[str, Any]:
        name = str(attributes.get("name") or "Imported from Klaviyo")
        out: dict[str, Any] = {"id": flow_id or _flow_id(attributes, name), "name": name}
        out["status"] = self._status(attributes)
        trigger = self._trigger(definition)
        if trigger is not None:
            out["trigger"] = trigger
        filters = self._conditions(definition.get("profile_filter"), "profile_filter", on="profile")
        if filters:
            out["profile_filters"] = filters
        reentry = self._reentry(definition.get("reentry_criteria"))
        if reentry is not None:
            out["reentry"] = reentry
        actions = {
            str(a.get("id") or a.get("temporary_id")): a
            for a in definition.get("actions") or []
            if isinstance(a, Mapping)
        }
        out["steps"] = self._chain(actions, definition.get("entry_action_id"), set())
        if self.manual_actions and out["status"] == "live":
            out["status"] = "manual"
            self.notes.append(
                f"note: webhook action(s) {', '.join(self.manual_actions)} are in manual status in "
                "Klaviyo; Flowhook's status is per flow, so the whole flow is manual (its "
                "deliveries wait in `flowhook held`)"
            )
        return out

    def _status(self, attributes: dict[str, Any]) -> str:
        status = str(attributes.get("status") or "draft")
        if status not in FLOW_STATUSES:
            self.notes.append(f"note: Klaviyo status {status!r} imported as draft")
        return FLOW_STATUSES.get(status, "draft")

    def _trigger(self, definition: dict[str, Any]) -> dict[str, Any] | None:
        triggers = [t for t in definition.get("triggers") or [] if isinstance(t, Mapping)]
        if not triggers:
            self.notes.append("not imported: the flow has no trigger; add one (trigger: {metric: ...})")
            return None
        if len(triggers) > 1:
            self.notes.append(f"not imported: {len(triggers) - 1} trigger(s) after the first (one per flow)")
        trigger = triggers[0]
        kind, ident = trigger.get("type"), str(trigger.get("id") or "")
        if kind in ("list", "segment") and ident:
            self.trigger_ok = True
            return {kind: ident}
        if kind != "metric" or not ident:
            self.notes.append(
                f"not imported: trigger of type {kind!r}; Flowhook starts flows on a metric, "
                "a list or a segment (a profile date: write trigger.date_property yourself)"
            )
            return None
        self.trigger_ok = True
        out: dict[str, Any] = {"metric": self._metric(ident)}
        filters = self._conditions(trigger.get("trigger_filter"), "trigger_filter", on="event")
        if filters:
            out["filters"] = filters
        return out

    def _metric(self, ident: str) -> str:
        if ident in self.metric_names:
            return self.metric_names[ident]
        self.notes.append(
            f"note: metric id {ident!r} used as the metric name; pass --metric {ident}='Placed "
            "Order' (the name your storefront events carry)"
        )
        self.metric_names[ident] = ident
        return ident

    def _reentry(self, criteria: Any) -> dict[str, Any] | None:
        if not isinstance(criteria, Mapping):
            return None
        unit, duration = criteria.get("unit"), criteria.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool):
            self.notes.append(f"not imported: reentry_criteria {dict(criteria)!r}")
            return None
        if unit == "alltime":
            return {"mode": "once" if duration >= 1 else "always"}
        if unit in UNIT_SUFFIX and duration > 0:
            amount = duration * 7 if unit == "week" else duration
            return {"mode": "once_per", "period": f"{amount}{'d' if unit == 'week' else UNIT_SUFFIX[unit]}"}
        if duration == 0:
            return {"mode": "always"}
        self.notes.append(f"not imported: reentry_criteria {dict(criteria)!r}")
        return None

    # --- actions -------------------------------------------------------------------------

    def _chain(self, actions: dict[str, Any], start: Any, seen: set[str]) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        current = None if start is None else str(start)
        while current is not None:
            if current in seen:
                self.notes.append(f"not imported: action {current} is reached twice (a loop); stopped there")
                break
            seen.add(current)
            action = actions.get(current)
            if action is None:
                self.notes.append(
                    f"not imported: a link to action {current}, which the definition does not have"
                )
                break
            current = self._action(action, actions, seen, steps)
        return steps

    def _action(
        self, action: Any, actions: dict[str, Any], seen: set[str], steps: list[dict[str, Any]]
    ) -> Any:
        """Append the action's step(s); return the id of the action after it (None at an end)."""
        kind = str(action.get("type"))
        ident = str(action.get("id") or action.get("temporary_id"))
        links = _mapping_at(action, "links")
        data = _mapping_at(action, "data")
        if kind in ("conditional-split", "trigger-split"):
            steps.append(self._split(kind, ident, data, links, actions, seen))
            return None  # both branches carry the rest of the flow
        if kind == "send-webhook":
            step = self._webhook(ident, data)
            if step is not None:
                steps.append(step)
        elif kind == "time-delay":
            step = self._delay(ident, data)
            if step is not None:
                steps.append(step)
        elif kind in SKIPPED_ACTIONS:
            self.notes.append(f"skipped: action {ident} ({kind}): Flowhook sends webhooks only")
        elif "next" in links and kind not in BRANCHING_ACTIONS:
            self.notes.append(f"not imported: action {ident} ({kind}); the flow goes on after it")
        else:
            self.notes.append(f"not imported: action {ident} ({kind}) and everything after it")
            return None
        nxt = links.get("next")
        return None if nxt is None else str(nxt)

    def _split(
        self,
        kind: str,
        ident: str,
        data: Mapping[str, Any],
        links: Mapping[str, Any],
        actions: dict[str, Any],
        seen: set[str],
    ) -> dict[str, Any]:
        trigger = kind == "trigger-split"
        source = data.get("trigger_filter") if trigger else data.get("profile_filter")
        conditions = self._conditions(
            source, f"action {ident} ({kind})", on="event" if trigger else "profile"
        )
        if not conditions:
            self.notes.append(
                f"not imported: every condition of action {ident} ({kind}); it is written as a "
                "split on 'imported_split_condition' exists — replace it"
            )
            conditions = [{"property": "imported_split_condition", "op": "exists"}]
        split = {
            "id": f"klaviyo-{_slug(ident)}",
            "if": conditions,
            "then": self._chain(actions, links.get("next_if_true"), seen),
            "else": self._chain(actions, links.get("next_if_false"), seen),
        }
        return {"trigger_split" if trigger else "split": split}

    def _webhook(self, ident: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        message = _mapping_at(data, "message")
        status = str(data.get("status") or "live")
        if status in ("disabled", "draft"):
            self.notes.append(
                f"skipped: webhook action {ident} is {status} in Klaviyo, so it sends nothing there"
            )
            return None
        if not message.get("url"):
            self.notes.append(f"not imported: webhook action {ident} has no url")
            return None
        if status == "manual":
            self.manual_actions.append(ident)
        hook: dict[str, Any] = {"id": f"klaviyo-{_slug(ident)}", "url": str(message["url"])}
        headers = self._headers(ident, message.get("headers"))
        if headers:
            hook["headers"] = headers
        if isinstance(message.get("body"), str) and message["body"].strip():
            hook["body"] = message["body"]
        self.webhooks += 1
        return {"webhook": hook}

    def _headers(self, ident: str, headers: Any) -> dict[str, str]:
        if isinstance(headers, list):  # some exports list them as [{"key": ..., "value": ...}]
            headers = {
                str(h.get("key") or h.get("name")): h.get("value") for h in headers if isinstance(h, Mapping)
            }
        if not isinstance(headers, Mapping):
            return {}
        out: dict[str, str] = {}
        for name, value in headers.items():
            if str(name).lower() in ("content-type", "user-agent"):
                continue  # Flowhook sets these itself
            if SECRET_HEADER.search(str(name)) and "{{" not in str(value):
                secret = _secret_name(str(name), self.secret_names)
                self.secret_names.add(secret)
                prefix = "Bearer " if str(value).lower().startswith("bearer ") else ""
                out[str(name)] = f"{prefix}{{{{ secrets.{secret} }}}}"
                self.notes.append(
                    f"note: webhook {ident} header {name}: its value is not copied into the flow file; "
                    f"set it as FLOWHOOK_SECRET_{secret} for the dispatcher"
                )
            else:
                out[str(name)] = str(value)
        return out

    def _delay(self, ident: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        unit, value = str(data.get("unit") or "days"), data.get("value")
        if unit not in ("minutes", "hours", "days") or not isinstance(value, int) or value < 0:
            self.notes.append(f"not imported: delay action {ident} ({dict(data)!r})")
            return None
        delay: dict[str, Any] = {}
        until = data.get("delay_until_time")
        if until and unit == "days":
            delay = {"days": value, "until": str(until)[:5]}
        elif value > 0:
            delay = {unit: value}
            if until:
                self.notes.append(
                    f"not imported: delay action {ident}'s time of day {until} (only with days)"
                )
        weekdays = data.get("delay_until_weekdays")
        if weekdays:
            delay["weekdays"] = [str(d) for d in weekdays]
        if data.get("secondary_value"):
            self.notes.append(
                f"not imported: delay action {ident}'s secondary_value {data['secondary_value']!r}"
            )
        if not delay:
            return None  # a zero delay waits for nothing
        if "until" in delay or "weekdays" in delay:
            delay["timezone"] = str(data.get("timezone") or "profile")
        return {"delay": delay}

    # --- conditions ----------------------------------------------------------------------

    def _conditions(self, source: Any, where: str, *, on: str) -> list[dict[str, Any]]:
        if not isinstance(source, Mapping):
            return []
        out: list[dict[str, Any]] = []
        for group in source.get("condition_groups") or []:
            conditions = [c for c in (group.get("conditions") or []) if isinstance(c, Mapping)]
            if len(conditions) > 1:
                self.notes.append(
                    f"not imported: an OR group of {len(conditions)} conditions in {where}; Flowhook "
                    "conditions all must hold (write the group as a split per condition)"
                )
                continue
            for condition in conditions:
                converted = self._condition(condition, on)
                if converted is None:
                    self.notes.append(
                        f"not imported: condition {_brief(condition)} in {where}; the flow may "
                        "let in profiles Klaviyo would keep out"
                    )
                else:
                    out.append(converted)
        return out

    def _condition(self, condition: Mapping[str, Any], on: str) -> dict[str, Any] | None:
        kind = condition.get("type")
        if kind == "profile-metric" and on == "profile":
            return self._history(condition)
        if (kind, on) not in (("profile-property", "profile"), ("metric-property", "event")):
            return None
        name = condition.get("property") if kind == "profile-property" else condition.get("field")
        if not isinstance(name, str) or not name:
            return None
        op_value = _filter(condition.get("filter"))
        if op_value is None:
            return None
        op, value = op_value
        out: dict[str, Any] = {"property": _property_name(name), "op": op}
        if op not in ("exists", "not_exists"):
            out["value"] = value
        return out

    def _history(self, condition: Mapping[str, Any]) -> dict[str, Any] | None:
        measured = _mapping_at(condition, "measurement_filter")
        if condition.get("measurement") != "count" or condition.get("metric_filters"):
            return None
        count = measured.get("value")
        if not isinstance(count, int) or isinstance(count, bool):
            return None
        op = {
            "equals": ("count_eq", count),
            "greater-than-or-equal": ("count_gte", count),
            "less-than-or-equal": ("count_lte", count),
            "greater-than": ("count_gte", count + 1),
            "less-than": ("count_lte", count - 1),
        }.get(str(measured.get("operator")))
        if op is None or op[1] < 0:
            return None
        out: dict[str, Any] = {
            "metric": self._metric(str(condition.get("metric_id"))),
            "op": op[0],
            "value": op[1],
        }
        timeframe = _mapping_at(condition, "timeframe_filter")
        window = timeframe.get("operator")
        if window == "flow-start":
            out["since"] = "flow_start"
        elif (
            window == "in-the-last"
            and timeframe.get("unit") in UNIT_SUFFIX
            and isinstance(timeframe.get("quantity"), int)
        ):
            unit, quantity = timeframe["unit"], timeframe["quantity"]
            out["within"] = f"{quantity * 7}d" if unit == "week" else f"{quantity}{UNIT_SUFFIX[unit]}"
        elif window != "alltime":
            return None
        return out


def _filter(spec: Any) -> tuple[str, Any] | None:
    """(op, value) of a Klaviyo filter, or None when Flowhook has no such comparison."""
    if not isinstance(spec, Mapping):
        return None
    kind, operator, value = spec.get("type"), str(spec.get("operator")), spec.get("value")
    if kind == "string" and operator in STRING_OPS:
        return STRING_OPS[operator], value
    if kind == "numeric" and operator in NUMERIC_OPS and isinstance(value, int | float):
        return NUMERIC_OPS[operator], value
    if kind == "boolean" and operator == "equals" and isinstance(value, bool):
        return "eq", value
    if kind == "existence" and operator in EXISTENCE_OPS:
        return EXISTENCE_OPS[operator], None
    if kind == "list" and operator in ("contains", "not-contains"):
        return STRING_OPS[operator], value
    return None


def _property_name(name: str) -> str:
    """`properties['Favorite Color']` / `properties.vip` -> the bare property name."""
    match = PROPERTY_WRAPPER.match(name.strip())
    return (match.group(1) or match.group(2)) if match else name.strip()


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower()
    return slug[:100] or "x"


def _flow_id(attributes: Mapping[str, Any], name: str) -> str:
    ident = attributes.get("id")
    return f"klaviyo-{_slug(str(ident))}" if ident else _slug(name)


def _secret_name(header: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "_", header).strip("_").upper() or "HEADER"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _mapping_at(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """data[key] when it is a mapping, else an empty one (Klaviyo leaves optional parts out)."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _brief(condition: Mapping[str, Any]) -> str:
    kind = condition.get("type")
    subject = condition.get("property") or condition.get("field") or condition.get("metric_id") or ""
    spec = _mapping_at(condition, "filter")
    operator = spec.get("operator") or condition.get("measurement") or ""
    return f"{kind} {subject} {operator}".strip()


# --- writing the flow file -------------------------------------------------------------


def to_yaml(definition: Mapping[str, Any]) -> str:
    """The definition as a YAML flow file; multi-line text (pasted bodies) as `|` blocks."""
    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value and not value.startswith((" ", "\t")) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    header = "# Imported from Klaviyo by `flowhook flows import`; check it with `flowhook flows validate`.\n"
    return header + yaml.dump(
        dict(definition), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
