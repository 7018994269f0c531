"""One msgspec Struct per record on every Flowhook topic: the single definition of each shape.

The JSON Schemas in `schemas/` are generated from these types (`processor.records.schemas`),
and the encoder (`processor.records.encode`) and decoders (`processor.records.due`, the
engine's input and state) use them, so a field is added, renamed or constrained here and
nowhere else.

Wire format rules (SPEC.md, docs/results.md), kept exactly:
- a field with a plain default (`= None`) is always written, as null when unset;
- a field defaulting to `UNSET` is written only when it was given (or decoded): optional
  fields that today's records omit when they do not apply (`dead_reason`, `deferrals`, ...);
- field order is the order below, which is the order the records have always had.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

# Integers on the wire fit in 64 bits (strict_json refuses larger ones on every topic); the
# bounds make the typed decoder refuse them too, without the strict parser's slow path.
INT64_MAX: Final = 2**63 - 1
Int = Annotated[int, Meta(ge=-(2**63), le=INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Positive = Annotated[int, Meta(ge=1, le=INT64_MAX)]
# The ids are 28 characters: the length bound keeps `$` from letting a trailing newline
# through (JSON-schema patterns are searched, and a header value cannot carry one).
DeliveryId = Annotated[str, Meta(pattern=r"^dlv_[0-9a-f]{24}$", min_length=28, max_length=28)]
RunId = Annotated[str, Meta(pattern=r"^run_[0-9a-f]{24}$", min_length=28, max_length=28)]
Time = Annotated[str, Meta(min_length=10, description="ISO-8601 UTC time")]
Object = dict[str, Any]

Method = Literal["POST", "PUT", "PATCH"]
Mode = Literal["send", "held", "invalid"]
Outcome = Literal["delivered", "retry_scheduled", "failed", "dead", "blocked", "held", "invalid", "cancelled"]
RunStatus = Literal["entered", "exited", "completed"]
WakeReason = Literal["delay", "date_property"]
Role = Literal["owner", "admin", "manager", "analyst"]
AuditAction = Literal[
    "flow.status", "flow.publish", "delivery.replay", "flow.replay", "held.send", "held.cancel",
    "user.add", "user.set_role", "user.set_password", "user.remove", "user.enable_2fa", "user.disable_2fa",
]


class _Record(Struct, kw_only=True, gc=False):
    """Base of every record: keyword construction, no GC tracking (records hold no cycles)."""


# --- inputs: events and profile updates ----------------------------------------------------


class EventProfile(_Record, kw_only=True):
    """The profile an event is about; it needs an `id` or an `email`."""

    id: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    email: Annotated[str, Meta(max_length=320)] | UnsetType = UNSET
    phone_number: str | UnsetType = UNSET
    first_name: str | UnsetType = UNSET
    last_name: str | UnsetType = UNSET
    properties: Object | UnsetType = UNSET


class Event(_Record, kw_only=True):
    """A storefront event on flowhook.events, keyed by profile id."""

    id: Annotated[str, Meta(min_length=1, max_length=256)]
    metric: Annotated[str, Meta(min_length=1, max_length=256)]
    time: Annotated[str, Meta(min_length=10, extra_json_schema={"format": "date-time"})]
    profile: EventProfile
    properties: Object | UnsetType = UNSET


class ProfileUpdate(EventProfile, kw_only=True):
    """A profile update on flowhook.profiles, keyed by profile id; merged into the stored profile."""

    time: Time | UnsetType = UNSET


# --- flows and wake-ups ----------------------------------------------------------------------


class FlowRecord(_Record, kw_only=True):
    """A published flow definition on the compacted flowhook.flows topic, keyed by flow id; a null value (tombstone) removes the flow."""  # noqa: E501

    id: Annotated[str, Meta(min_length=1)]
    version: Positive
    definition: Annotated[Object, Meta(
        description="The flow definition as applied; it matches flow.schema.json.")]
    applied_at: Annotated[str, Meta(min_length=10)]
    source: str


class WakeUp(_Record, kw_only=True):
    """An internal record on flowhook.wakeups, keyed by profile id: something of this profile (a delay or a date trigger) fell due. Duplicates are harmless."""  # noqa: E501

    profile_id: Annotated[str, Meta(min_length=1)]
    due_at: Annotated[str, Meta(min_length=10)]
    reason: WakeReason


# --- webhook-due records (and their retry, dead-letter and held copies) -----------------------


class Request(_Record, kw_only=True):
    """The rendered request; secrets appear only as `{{ secrets.NAME }}` references."""

    method: Method
    url: str
    headers: dict[str, str]
    secret_headers: dict[str, str]
    body: str | None
    signing_secrets: list[str]


class Options(_Record, kw_only=True):
    """The webhook step's delivery options, in milliseconds."""

    timeout_ms: Positive
    retry_ms: list[Count] | None
    max_age_ms: Positive
    rate_limit: Annotated[float, Meta(gt=0)] | None


class LastAttempt(_Record, kw_only=True):
    """The last real attempt's status, error and response excerpt, for the dead record."""

    http_status: Int | UnsetType | None = UNSET
    error: str | UnsetType | None = UNSET
    response_excerpt: str | UnsetType | None = UNSET


class WebhookDue(_Record, kw_only=True):
    """A webhook step reached by a run, on flowhook.webhooks (and the retry tiers, the dead letters and the held queue), keyed by delivery id. Secrets appear only as references."""  # noqa: E501

    delivery_id: DeliveryId
    flow_id: str
    flow_version: Positive
    flow_name: str | UnsetType | None = UNSET
    step_id: str
    run_id: RunId
    profile_id: str
    event_id: str
    metric: str
    mode: Mode
    error: str | UnsetType | None = UNSET
    request: Request
    options: Options
    due_at: str
    created_at: str | UnsetType = UNSET
    attempt: Positive
    not_before: str | UnsetType | None = UNSET
    first_attempt_at: str | UnsetType | None = UNSET
    dead_reason: str | UnsetType | None = UNSET
    replayed_at: Annotated[
        str | None, Meta(description="set by flowhook replay: attempt 1 is made again on purpose")
    ] | UnsetType = UNSET
    deferrals: Annotated[
        Count, Meta(description="tries deferred (circuit open, secret missing): not attempts")
    ] | UnsetType = UNSET
    last_attempt: Annotated[
        LastAttempt | None,
        Meta(description="the last real attempt's status, error and response excerpt, for the dead record"),
    ] | UnsetType = UNSET


# --- results ---------------------------------------------------------------------------------


class DeliveryResult(_Record, kw_only=True, tag_field="type", tag="delivery"):
    """One attempt outcome of a webhook-due record, on flowhook.results."""

    delivery_id: str
    flow_id: str
    flow_version: Int
    step_id: str
    run_id: str
    profile_id: str
    event_id: str
    metric: str
    destination: Annotated[str, Meta(extra_json_schema={"not": {"pattern": "[?#@]"}})]
    attempt: Positive
    outcome: Annotated[Outcome, Meta(description=(
        "cancelled: a held delivery (manual status) cancelled from the Needs-Review queue with "
        "`flowhook held cancel`; nothing was sent. A held delivery sent from the queue gets the "
        "outcomes of a normal try."))]
    http_status: Int | None
    latency_ms: Annotated[float, Meta(ge=0)] | None
    error: Annotated[str, Meta(max_length=500)] | None
    response_excerpt: Annotated[str, Meta(max_length=1024)] | None
    due_at: str
    sent_at: str | None
    finished_at: str
    next_attempt_at: str | None = None
    deferred: Annotated[bool, Meta(description=(
        "a try the dispatcher deferred (circuit open, secret missing): not an attempt, nothing sent"
    ))] | UnsetType = UNSET


class RunResult(_Record, kw_only=True, tag_field="type", tag="run"):
    """One lifecycle change of a run, on flowhook.results."""

    run_id: str
    flow_id: str
    flow_version: Int | UnsetType = UNSET
    profile_id: str
    event_id: str
    status: RunStatus
    reason: str | None = None
    at: str


Result = DeliveryResult | RunResult


# --- invalid input and audit -----------------------------------------------------------------


class InvalidInput(_Record, kw_only=True):
    """An input record that could not be used, copied to flowhook.events.invalid with its original bytes (shortened past 64 KiB of value or 1 KiB of key, with the original's size and SHA-256)."""  # noqa: E501

    source_topic: str
    partition: Count
    offset: Count
    key_b64: str | None
    value_b64: str | None
    reason: str
    seen_at: str
    key_size: Annotated[Count | None, Meta(description="bytes of the original key")] | UnsetType = UNSET
    value_size: Annotated[Count | None, Meta(description="bytes of the original value")] | UnsetType = UNSET
    value_sha256: Annotated[
        Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None,
        Meta(description="SHA-256 of the original value, hex"),
    ] | UnsetType = UNSET
    truncated: Annotated[
        bool, Meta(description="key_b64 or value_b64 holds only the first bytes of the original")
    ] | UnsetType = UNSET


class Audit(_Record, kw_only=True, forbid_unknown_fields=True):
    """One change made through the console or its user commands, on flowhook.audit, keyed by flow id (or by user name for user changes). Never carries a password, hash, TOTP secret or webhook secret."""  # noqa: E501

    id: Annotated[str, Meta(pattern="^aud_[0-9a-f]{24}$")]
    at: Annotated[str, Meta(min_length=10, description="ISO-8601 UTC time of the change")]
    who: Annotated[str, Meta(min_length=1,
                             description="the console user, or cli:<os user> for user commands")]
    role: Role | None
    action: AuditAction
    flow_id: str | None
    flow_version: Annotated[
        Int | None, Meta(description="the flow's version after the change (before, for replays)")
    ]
    detail: Annotated[Object, Meta(description=(
        'what changed, e.g. {"from": "manual", "to": "live"} or {"deliveries": 3, "webhook_ids": [...]}'
    ))]
