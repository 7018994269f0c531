"""The results summary: per flow and step, deliveries by final outcome, latencies of both
kinds, success rate and top errors; per flow, run counts that add up. Pure.

A delivery's final outcome is its last record that is not `retry_scheduled`; one with only
`retry_scheduled` records is pending. Records repeated after a crash (same delivery,
attempt and outcome; same run and status) are counted once. Run counts satisfy
`entered = completed + exited + active`: `completed` and `exited` count only runs whose
`entered` record was read; runs that ended without one read are `not_entered` (stopped by a
profile filter at entry) or `ended_unseen` (they entered before the records read, e.g. with
`--since`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from processor.clock import parse_iso_ms

__all__ = ["FINAL_OUTCOMES", "FlowRuns", "StepFigures", "Summary", "percentile", "summarize"]

FINAL_OUTCOMES: Final = ("delivered", "failed", "dead", "blocked", "held", "invalid", "cancelled")
ENTRY_EXIT_PREFIX: Final = "profile filter at entry"


def percentile(values: list[float], quantile: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class StepFigures:
    """One webhook step of one flow."""

    flow_id: str
    step_id: str
    final: Counter[str] = field(default_factory=Counter)  # deliveries by final outcome, or "pending"
    attempts: int = 0
    http_ms: list[float] = field(default_factory=list)  # per attempt
    e2e_ms: list[float] = field(default_factory=list)  # per delivery: due_at -> final finished_at
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # error -> a delivery id that had it

    @property
    def deliveries(self) -> int:
        return sum(self.final.values())

    @property
    def success_rate(self) -> float | None:
        """Delivered among the deliveries that have a final outcome."""
        done = self.deliveries - self.final["pending"]
        return None if done == 0 else self.final["delivered"] / done

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow_id, "step_id": self.step_id, "deliveries": self.deliveries,
            "outcomes": {o: self.final[o] for o in (*FINAL_OUTCOMES, "pending")},
            "success_rate": self.success_rate, "attempts": self.attempts,
            "http_latency_ms": _quantiles(self.http_ms), "trigger_to_delivery_ms": _quantiles(self.e2e_ms),
            "top_errors": [{"error": e, "count": n, "sample_delivery_id": self.samples[e]}
                           for e, n in self.errors.most_common(5)],
        }


@dataclass
class FlowRuns:
    """The runs of one flow."""

    flow_id: str
    entered: int = 0
    completed: int = 0
    exited: int = 0
    not_entered: int = 0
    ended_unseen: int = 0
    completed_not_delivered: int = 0
    exit_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def active(self) -> int:
        return self.entered - self.completed - self.exited

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow_id, "entered": self.entered, "completed": self.completed,
            "exited": self.exited, "active": self.active, "not_entered": self.not_entered,
            "ended_before_window": self.ended_unseen,
            "completed_not_delivered": self.completed_not_delivered,
            "exit_reasons": dict(self.exit_reasons.most_common(5)),
        }


@dataclass
class Summary:
    steps: dict[tuple[str, str], StepFigures] = field(default_factory=dict)
    runs: dict[str, FlowRuns] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return sum(s.final["pending"] for s in self.steps.values())

    def as_dict(self) -> dict[str, Any]:
        return {"steps": [self.steps[k].as_dict() for k in sorted(self.steps)],
                "runs": [self.runs[k].as_dict() for k in sorted(self.runs)]}


def _quantiles(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.50), "p95": percentile(values, 0.95), "count": len(values)}


@dataclass
class _Delivery:
    key: tuple[str, str]
    run_id: str
    final: dict[str, Any] | None = None  # the last record with a final outcome
    seen: set[tuple[int, str]] = field(default_factory=set)  # (attempt, outcome)


def summarize(records: Iterable[dict[str, Any]]) -> Summary:
    """Fold result records (in topic order) into a Summary."""
    summary = Summary()
    deliveries: dict[str, _Delivery] = {}
    runs: dict[str, dict[str, Any]] = {}  # run id -> {"flow", statuses, reason}
    for record in records:
        if record.get("type") == "run":
            run = runs.get(record["run_id"]) or runs.setdefault(
                record["run_id"], {"flow": record["flow_id"], "statuses": set(), "reason": None}
            )
            run["statuses"].add(record["status"])
            if record["status"] == "exited":
                run["reason"] = record.get("reason")
        else:
            _add_delivery(summary, deliveries, record)
    _finish_deliveries(summary, deliveries)
    _count_runs(summary, runs, deliveries)
    return summary


def _add_delivery(summary: Summary, deliveries: dict[str, _Delivery], record: dict[str, Any]) -> None:
    key = (record["flow_id"], record["step_id"])
    step = summary.steps.get(key) or summary.steps.setdefault(key, StepFigures(*key))
    delivery = deliveries.get(record["delivery_id"])
    if delivery is None:
        delivery = deliveries[record["delivery_id"]] = _Delivery(key, record.get("run_id", ""))
    seen = (record.get("attempt", 1), record["outcome"])
    if seen in delivery.seen:
        return  # the same outcome written again after a crash
    delivery.seen.add(seen)
    step.attempts += 1
    if record.get("latency_ms") is not None:
        step.http_ms.append(record["latency_ms"])
    error = record.get("error")
    if error:
        step.errors[error] += 1
        step.samples.setdefault(error, record["delivery_id"])
    if record["outcome"] != "retry_scheduled":
        delivery.final = record


def _finish_deliveries(summary: Summary, deliveries: dict[str, _Delivery]) -> None:
    for delivery in deliveries.values():
        step = summary.steps[delivery.key]
        if delivery.final is None:
            step.final["pending"] += 1
            continue
        step.final[delivery.final["outcome"]] += 1
        e2e = _e2e_ms(delivery.final)
        if e2e is not None:
            step.e2e_ms.append(e2e)


def _e2e_ms(record: dict[str, Any]) -> float | None:
    try:
        return float(parse_iso_ms(record["finished_at"]) - parse_iso_ms(record["due_at"]))
    except (KeyError, TypeError, ValueError):
        return None


def _count_runs(summary: Summary, runs: dict[str, dict[str, Any]], deliveries: dict[str, _Delivery]) -> None:
    undelivered = {d.run_id for d in deliveries.values()
                   if d.final is None or d.final["outcome"] != "delivered"}
    for run_id, run in runs.items():
        figures = summary.runs.get(run["flow"]) or summary.runs.setdefault(run["flow"], FlowRuns(run["flow"]))
        statuses = run["statuses"]
        ended = "completed" if "completed" in statuses else "exited" if "exited" in statuses else None
        if "entered" not in statuses:
            reason = run["reason"] or ""
            if ended == "exited" and reason.startswith(ENTRY_EXIT_PREFIX):
                figures.not_entered += 1
            elif ended is not None:
                figures.ended_unseen += 1
            continue
        figures.entered += 1
        if ended == "completed":
            figures.completed += 1
            figures.completed_not_delivered += run_id in undelivered
        elif ended == "exited":
            figures.exited += 1
            figures.exit_reasons[run["reason"] or "unknown"] += 1
