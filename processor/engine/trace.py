"""A record of the decisions `core.handle` takes, step by step, for `flowhook preview`.

The engine itself passes no trace (None), so the hot path only pays a `None` check per
decision. Preview passes a list and formats what the core did: there is one interpreter of
flows, and preview shows its run instead of walking the flow with code of its own.
Pure: no Kafka, no Faust.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from processor.flows.model import Step

TraceKind = Literal[
    "not_member",  # a list or segment trigger for another list or segment (reason)
    "draft",  # the flow is draft: the event starts nothing
    "trigger_filter_failed",  # reason: the failed trigger filter
    "reentry_refused",  # the re-entry rule keeps the profile out
    "profile_filter_failed",  # at entry; reason: the failed profile filter
    "entered",
    "delay",  # step: the delay; until_ms: when the run moves on
    "delay_skipped",  # step: a delay with nothing after it
    "split",  # step; branch "then" | "else"; reason: why the conditions failed (else)
    "webhook",  # step; due: the webhook-due record produced
    "exited",  # reason: the stop reason; step: the step the run did not reach (or None)
    "completed",
]


@dataclass(frozen=True)
class TraceStep:
    """One decision of the core for one flow (and run, once it has one)."""

    kind: TraceKind
    flow_id: str
    run_id: str | None = None
    at_ms: int = 0  # the core's clock when it decided
    step: Step | None = None
    reason: str | None = None
    until_ms: int | None = None
    branch: Literal["then", "else"] | None = None
    due: dict[str, Any] | None = None


Trace = list[TraceStep]
