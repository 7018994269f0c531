"""Terminal rendering of a results Summary (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from processor.results import OUTCOME_ORDER, Summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def summary_table(summary: Summary) -> Table:
    table = Table(title="Deliveries by flow and step (latest outcome per delivery)")
    table.add_column("flow")
    table.add_column("step")
    shown = [o for o in OUTCOME_ORDER if any(s.final[o] for s in summary.steps.values())]
    for outcome in shown:
        table.add_column(outcome, justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    table.add_column("top error")
    for (flow_id, step_id), step in sorted(summary.steps.items()):
        top = step.errors.most_common(1)
        table.add_row(
            flow_id,
            step_id,
            *(str(step.final[o]) for o in shown),
            str(step.attempts),
            _ms(step.latency_ms(0.50)),
            _ms(step.latency_ms(0.95)),
            f"{top[0][0][:40]} ({top[0][1]})" if top else "",
        )
    return table


def print_summary(summary: Summary, console: Console | None = None) -> None:
    console = console or Console()
    console.width = max(console.width, 120)  # the table must not wrap into an unreadable column soup
    if not summary.steps and not summary.runs:
        console.print("no results yet")
        return
    console.print(summary_table(summary))
    if summary.runs:
        runs = ", ".join(f"{status} {n}" for status, n in sorted(summary.runs.items()))
        console.print(f"runs: {runs}")
    for reason, n in summary.exit_reasons.most_common(3):
        console.print(f"  exited ({n}): {reason}")
