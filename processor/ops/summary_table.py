"""Terminal rendering of a results Summary: fixed columns, labelled latencies, full errors."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from processor.ops.summary import FINAL_OUTCOMES, Summary, percentile

__all__ = ["print_summary", "runs_table", "steps_table"]

TOP_ERRORS = 3


def _ms(values: list[float], quantile: float) -> str:
    value = percentile(values, quantile)
    if value is None:
        return "-"
    return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def steps_table(summary: Summary) -> Table:
    """One row per flow and step; the same columns whatever the data."""
    table = Table(title="Deliveries by flow and step (final outcome per delivery)")
    table.add_column("flow", no_wrap=True)
    table.add_column("step", no_wrap=True)
    for name in ("deliveries", *FINAL_OUTCOMES, "pending", "success", "attempts",
                 "http p50/p95", "e2e p50/p95"):
        table.add_column(name, justify="right")
    for key in sorted(summary.steps):
        step = summary.steps[key]
        table.add_row(
            step.flow_id, step.step_id, str(step.deliveries),
            *(str(step.final[o]) for o in (*FINAL_OUTCOMES, "pending")),
            _rate(step.success_rate), str(step.attempts),
            f"{_ms(step.http_ms, 0.50)} / {_ms(step.http_ms, 0.95)}",
            f"{_ms(step.e2e_ms, 0.50)} / {_ms(step.e2e_ms, 0.95)}",
        )
    return table


def runs_table(summary: Summary) -> Table:
    """Per flow: entered = completed + exited + active."""
    table = Table(title="Runs by flow (entered = completed + exited + active)")
    table.add_column("flow", no_wrap=True)
    for name in ("entered", "completed", "exited", "active", "not entered",
                 "completed, not delivered", "ended, entered earlier"):
        table.add_column(name, justify="right")
    for flow_id in sorted(summary.runs):
        runs = summary.runs[flow_id]
        table.add_row(flow_id, str(runs.entered), str(runs.completed), str(runs.exited), str(runs.active),
                      str(runs.not_entered), str(runs.completed_not_delivered), str(runs.ended_unseen))
    return table


def print_summary(summary: Summary, console: Console | None = None) -> None:
    console = console or Console()
    console.width = max(console.width, 180)  # fixed columns must not wrap into an unreadable column soup
    if not summary.steps and not summary.runs:
        console.print("no results yet")
        return
    if summary.steps:
        console.print(steps_table(summary))
        console.print("http: HTTP latency of each attempt; e2e: from the run reaching the step to the "
                      "delivery's final outcome (retries included)")
    if summary.runs:
        console.print(runs_table(summary))
    _print_errors(summary, console)


def _print_errors(summary: Summary, console: Console) -> None:
    lines = []
    for key in sorted(summary.steps):
        step = summary.steps[key]
        for error, count in step.errors.most_common(TOP_ERRORS):
            lines.append(f"{step.flow_id}/{step.step_id}: {count}× (e.g. {step.samples[error]}): {error}")
    if lines:
        console.print("top errors (see one with `flowhook results --delivery ID`):")
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    for flow_id in sorted(summary.runs):
        for reason, n in summary.runs[flow_id].exit_reasons.most_common(TOP_ERRORS):
            line = f"  {flow_id} exited ({n}): {reason}"
            console.print(line, markup=False, highlight=False, soft_wrap=True)
