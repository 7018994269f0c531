"""Reading outcomes back: filtering, and the per-flow, per-step summary analysts ask for first."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from processor.records import TERMINAL_OUTCOMES

OUTCOME_ORDER = ("delivered", "retry_scheduled", "failed", "dead", "blocked", "held", "invalid", "cancelled")


@dataclass
class StepSummary:
    """Outcomes of one webhook step of one flow."""

    flow_id: str
    step_id: str
    final: Counter[str] = field(default_factory=Counter)  # deliveries by their latest outcome
    attempts: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def deliveries(self) -> int:
        return sum(self.final.values())

    def latency_ms(self, quantile: float) -> float | None:
        return percentile(self.latencies, quantile)


@dataclass
class Summary:
    steps: dict[tuple[str, str], StepSummary] = field(default_factory=dict)
    runs: Counter[str] = field(default_factory=Counter)  # run status -> count
    exit_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def pending(self) -> int:
        """Deliveries whose latest outcome is not terminal (a retry is still scheduled)."""
        return sum(s.final["retry_scheduled"] for s in self.steps.values())


def percentile(values: list[float], quantile: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1))
    return ordered[rank]


def summarize(records: Iterable[dict[str, Any]]) -> Summary:
    """Fold result records (in topic order) into a Summary."""
    summary = Summary()
    latest: dict[str, tuple[tuple[str, str], str]] = {}
    for record in records:
        if record.get("type") == "run":
            summary.runs[record["status"]] += 1
            if record["status"] == "exited" and record.get("reason"):
                summary.exit_reasons[record["reason"]] += 1
            continue
        key = (record["flow_id"], record["step_id"])
        step = summary.steps.setdefault(key, StepSummary(*key))
        step.attempts += 1
        if record.get("latency_ms") is not None:
            step.latencies.append(record["latency_ms"])
        if record.get("error"):
            step.errors[record["error"]] += 1
        previous = latest.get(record["delivery_id"])
        # A terminal outcome is never overridden by a late retry record of the same delivery.
        if previous is None or previous[1] not in TERMINAL_OUTCOMES or record["outcome"] != "retry_scheduled":
            latest[record["delivery_id"]] = (key, record["outcome"])
    for key, outcome in latest.values():
        summary.steps[key].final[outcome] += 1
    return summary


def matches(record: dict[str, Any], flow_id: str | None) -> bool:
    return flow_id is None or record.get("flow_id") == flow_id
