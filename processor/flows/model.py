"""The flow model: what a validated flow definition is, as frozen dataclasses.

Built only by `processor.flows.loader` (which validates); read by the engine and the
renderer. Durations are milliseconds. Step ids are stable: a webhook's own `id`, else the
step's path in the definition (e.g. "steps[1].then[0]"), so runs can point at a step.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["draft", "manual", "live"]
ReentryMode = Literal["once", "always", "once_per"]
TriggerKind = Literal["metric", "list", "segment", "date_property"]
SplitOn = Literal["profile", "event"]

SUBSCRIBED_TO_LIST = "Subscribed to List"
ADDED_TO_SEGMENT = "Added to Segment"


@dataclass(frozen=True)
class Condition:
    """One filter condition.

    Property conditions: `property` set, `metric` None; ops eq ne gt gte lt lte contains
    not_contains in not_in exists not_exists. History conditions: `metric` set, ops
    count_eq count_gte count_lte, with `since == "flow_start"` or `within_ms`.
    """

    op: str
    property: str | None = None
    metric: str | None = None
    value: Any = None
    since: Literal["flow_start"] | None = None
    within_ms: int | None = None
    # What a property condition reads: the profile, or the triggering event's properties
    # (trigger filters and `on: event` splits). Set by the loader; history ignores it.
    on: SplitOn = "profile"

    # `builtins.property`: the field named `property` shadows the builtin in this class body.
    @builtins.property
    def is_history(self) -> bool:
        """True for history conditions (about how often a metric happened)."""
        return self.metric is not None


@dataclass(frozen=True)
class DateProperty:
    """A date stored on the profile that starts runs (e.g. three days before a birthday)."""

    property: str
    offset_ms: int = 0
    at: str = "09:00"  # HH:MM in `timezone`
    timezone: str = "UTC"
    yearly: bool = True


@dataclass(frozen=True)
class Trigger:
    """What starts a run: a metric, list or segment membership, or a profile date."""

    kind: TriggerKind
    # The metric whose events start the flow: the metric itself, or "Subscribed to List" /
    # "Added to Segment" for list/segment triggers; None for date_property triggers.
    metric: str | None = None
    list_id: str | None = None
    segment_id: str | None = None
    date_property: DateProperty | None = None
    filters: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Reentry:
    """Whether a profile may enter the flow again: once, always, or once per period."""

    mode: ReentryMode = "once"
    period_ms: int | None = None  # only for once_per


PROFILE_TIMEZONE = "profile"  # DelayStep.timezone: the profile's own time zone


@dataclass(frozen=True)
class DelayStep:
    """Wait as Klaviyo's time delays do (`processor.flows.delays` computes when a run moves on).

    - a duration (N minutes, hours or days): `duration_ms`;
    - N calendar days, then until a time of day: `days` and `until` ("HH:MM");
    - only on some weekdays: `weekdays` (0 = Monday); a delay ending on another day waits
      for the next allowed day (at `until` when given, else at midnight);
    in `timezone`, an IANA name or "profile" (the profile's `timezone` property, else
    `fallback_timezone`).
    """

    id: str
    duration_ms: int | None = None  # either a duration ...
    until: str | None = None  # ... or a time of day "HH:MM" in `timezone`, after `days` calendar days
    timezone: str = "UTC"
    days: int = 0
    weekdays: tuple[int, ...] = ()
    fallback_timezone: str = "UTC"


@dataclass(frozen=True)
class WebhookStep:
    """Send one HTTP request; templates in url, headers and body are rendered per run."""

    id: str
    url: str
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)  # name -> template
    body: Any = None  # dict/list (object body: string leaves are templates) or str (text body)
    timeout_ms: int = 10_000
    retry_ms: tuple[int, ...] | None = None  # None: the default schedule
    max_age_ms: int = 24 * 3_600_000
    rate_limit: float | None = None
    signing_secrets: tuple[str, ...] = ()  # secret NAMES, from "{{ secrets.NAME }}"


@dataclass(frozen=True)
class SplitStep:
    """Continue with `then` when every condition holds, else with `else_`.

    `on: profile` is Klaviyo's conditional split; `on: event` its trigger split (written
    `trigger_split:` in a flow file), on the triggering event's properties.
    """

    id: str
    conditions: tuple[Condition, ...]
    on: SplitOn = "profile"  # "event": a trigger split, on the triggering event
    then: tuple[Step, ...] = ()
    else_: tuple[Step, ...] = ()


Step = DelayStep | WebhookStep | SplitStep


@dataclass(frozen=True)
class Flow:
    """A validated flow definition, as the engine runs it."""

    id: str
    name: str
    status: Status
    trigger: Trigger
    steps: tuple[Step, ...]
    profile_filters: tuple[Condition, ...] = ()
    reentry: Reentry = field(default_factory=Reentry)
    version: int = 1
    source: str = "<memory>"  # file the definition came from, for messages
    definition: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
