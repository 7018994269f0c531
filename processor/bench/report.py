"""The table `flowhook bench` prints: each stage with its rate and its ratio to the baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from processor.bench.cpu import ROLES, pipeline_total_us

if TYPE_CHECKING:
    from processor.bench.stages import BenchConfig, StageResult


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def print_report(config: BenchConfig, results: list[StageResult]) -> None:
    by_name = {r.name.split(" ")[0]: r for r in results}
    raw = by_name.get("raw")
    agent = by_name.get("plain")
    table = Table(title=f"flowhook bench: {config.events:,} events, {config.profiles:,} profiles, "
                        f"concurrency {config.concurrency}, {config.partitions} partitions, "
                        f"{config.store} store, {_broker_name(config)}")
    for column in ("stage", "records", "seconds", "per second", "× raw HTTP", "× plain agent",
                   "p50", "p95", "p99", "peak RSS", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for result in results:
        p = result.as_dict()
        table.add_row(
            result.name,
            f"{result.count:,}",
            "-" if result.seconds is None else f"{result.seconds:.2f}",
            _fmt(result.rate),
            _ratio(result, raw),
            _ratio(result, agent) if result.name.startswith(("processor", "fill")) else "",
            _fmt(p["p50_ms"], " ms"),
            _fmt(p["p95_ms"], " ms"),
            _fmt(p["p99_ms"], " ms"),
            ", ".join(f"{role} {mb:.0f} MiB" for role, mb in result.rss_mb.items()),
            result.note,
        )
    console = Console()
    console.width = max(console.width, 200)  # a table this wide must not wrap
    console.print(table)
    if any(result.cpu_us for result in results):
        console.print(cpu_table(results))


def cpu_table(results: list[StageResult]) -> Table:
    """CPU µs per record for each process of each stage, and the pipeline's total (the
    driver, which stands in for the storefront and the analysts, is beside it, not in it)."""
    roles = [role for role in ROLES if any(role in result.cpu_us for result in results)]
    table = Table(title="CPU µs per record delivered, per process (utime + stime in the stage's window)")
    for column in ("stage", "records", *roles, "total (without driver)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for result in results:
        per_record = result.cpu_us
        if not per_record:
            continue
        table.add_row(result.name, f"{result.cpu_records:,}",
                      *(_fmt(per_record.get(role)) for role in roles), _fmt(pipeline_total_us(per_record)))
    return table


def _broker_name(config: BenchConfig) -> str:
    if config.brokers:
        return f"brokers {config.brokers}"
    return "Apache Kafka (1 node)" if config.broker == "kafka" else "embedded broker"


def _ratio(result: StageResult, base: StageResult | None) -> str:
    if base is None or not base.rate or not result.rate or result is base:
        return ""
    return f"{result.rate / base.rate:.2f}"
