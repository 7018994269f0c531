"""`flowhook results` and `flowhook lag`: what happened, and how far behind the workers are."""

from __future__ import annotations

import sys
from typing import Any, get_args

import click
import orjson
from rich.console import Console
from rich.table import Table

from processor.cli.base import brokers_option, load_settings, run_async, stop_on_signals
from processor.dispatch.replay import parse_time
from processor.ops.delivery_view import describe_delivery, print_delivery
from processor.ops.lag import group_lags
from processor.ops.reading import Selection, read_results
from processor.ops.summary import summarize
from processor.ops.summary_table import print_summary
from processor.records import Outcome

__all__ = ["lag", "results"]


def _time_option(name: str, text: str) -> Any:
    return click.option(name, default=None, metavar="TIME",
                        help=f"{text} (ISO-8601, or a duration ago such as 2h).")


@click.command()
@click.option("--follow", is_flag=True, help="Keep reading new outcomes until Ctrl-C.")
@click.option("--flow", "flow_id", default=None, help="Only this flow's records.")
@click.option("--delivery", "delivery_id", default=None,
              help="Every attempt of one delivery, its final outcome, last HTTP status and response.")
@click.option("--outcome", "outcomes", multiple=True, type=click.Choice(get_args(Outcome)),
              help="Only delivery records with this outcome (repeat for several).")
@_time_option("--since", "Only records written at or after TIME; seeks there instead of reading everything")
@_time_option("--until", "Only records written before TIME")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many records.")
@click.option("--summary", is_flag=True,
              help="Per flow and step: outcomes, success rate, HTTP and trigger-to-delivery latency, "
              "top errors; per flow: run counts.")
@click.option("--json", "as_json", is_flag=True, help="With --summary or --delivery: one JSON object.")
@click.option("--idle", default=2.0, show_default=True, help="Stop after this many idle seconds.")
@brokers_option
def results(follow: bool, flow_id: str | None, delivery_id: str | None, outcomes: tuple[str, ...],
            since: str | None, until: str | None, limit: int | None, summary: bool, as_json: bool,
            idle: float, brokers: str | None) -> None:
    """Read delivery and run outcomes from the results topic (JSON lines, a delivery, or a summary)."""
    try:
        selection = Selection(flow_id=flow_id, delivery_id=delivery_id, outcomes=frozenset(outcomes),
                              since_ms=parse_time(since), until_ms=parse_time(until), limit=limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since/--until") from None
    settings = load_settings(brokers=brokers)
    collect = summary or delivery_id is not None
    follow = follow and not collect
    sys.exit(run_async(_results(settings, selection, collect, summary, as_json, idle, follow)))


async def _results(settings: Any, selection: Any, collect: bool, summary: bool, as_json: bool, idle: float,
                   follow: bool) -> int:
    stop = stop_on_signals()  # Ctrl-C ends a following read: exit 0 (SPEC §5)
    collected: list[dict[str, Any]] = []
    async for raw, value in read_results(settings, selection, idle_s=idle, follow=follow, stop=stop.is_set):
        if collect:
            collected.append(value)
        else:
            sys.stdout.buffer.write(raw + b"\n")
            sys.stdout.flush()
    if summary:
        _show_summary(collected, as_json)
    elif selection.delivery_id is not None:
        _show_delivery(selection.delivery_id, collected, as_json)
    return 0


def _show_summary(collected: list[dict[str, Any]], as_json: bool) -> None:
    figures = summarize(collected)
    if as_json:
        click.echo(orjson.dumps(figures.as_dict()).decode())
    else:
        print_summary(figures)


def _show_delivery(delivery_id: str, collected: list[dict[str, Any]], as_json: bool) -> None:
    view = describe_delivery(delivery_id, collected)
    if as_json:
        click.echo(orjson.dumps(view).decode())
    else:
        print_delivery(view)


@click.command()
@click.option("--group", "groups", multiple=True, help="Only this consumer group (repeat for several).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group and topic.")
@brokers_option
def lag(groups: tuple[str, ...], as_json: bool, brokers: str | None) -> None:
    """Committed consumer lag per consumer group and topic (Flowhook's groups by default)."""
    settings = load_settings(brokers=brokers)
    rows: list[Any] = []

    async def read() -> int:
        rows.extend(await group_lags(settings, groups or None))
        return 0

    run_async(read())
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row.as_dict()).decode())
        return
    _print_lag(rows)


def _print_lag(rows: list[Any]) -> None:
    console = Console()
    if not rows:
        console.print("no consumer groups with committed offsets under this topic prefix")
        return
    table = Table(title="Consumer lag (committed offsets against the end of each topic)")
    for name in ("group", "topic", "partitions", "committed", "end", "lag"):
        table.add_column(name, justify="left" if name in ("group", "topic") else "right")
    for row in rows:
        figures = (row.partitions, row.committed, row.end, row.lag)
        table.add_row(row.group, row.topic, *(str(n) for n in figures))
    console.print(table)
