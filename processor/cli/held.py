"""`flowhook held list|send|cancel`: the Needs-Review queue of manual flows (processor.dispatch.held).

Exit codes: 0 ok, 1 no broker, 2 bad usage (no ids and neither --flow nor --all).
"""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from processor.cli.base import brokers_option, load_settings, run_async
from processor.dispatch import held as queue

IDLE_HELP = "Seconds without new records that end reading the topics."


@click.group()
def held() -> None:
    """The Needs-Review queue: deliveries of manual flows, waiting to be sent or cancelled."""


@held.command("list")
@brokers_option
@click.option("--flow", "flow_id", default=None, help="Only deliveries of this flow id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option("--idle", default=1.0, show_default=True, help=IDLE_HELP)
def list_command(brokers: str | None, flow_id: str | None, as_json: bool, idle: float) -> None:
    """Show the deliveries waiting for review, oldest first."""
    settings = _settings(brokers)
    waiting = _run(settings, queue.read_queue(settings, idle_s=idle))
    rows = [h.row() for h in waiting if flow_id is None or h.flow_id == flow_id]
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    _print_table(rows)


def _selection_options(func: Any) -> Any:
    func = click.argument("delivery_ids", nargs=-1)(func)
    func = click.option("--flow", "flow_id", default=None, help="All queued deliveries of this flow.")(func)
    func = click.option("--all", "everything", is_flag=True, help="Every queued delivery.")(func)
    func = click.option("--idle", default=1.0, show_default=True, help=IDLE_HELP)(func)
    return brokers_option(func)


@held.command("send")
@_selection_options
def send_command(delivery_ids: tuple[str, ...], flow_id: str | None, everything: bool, idle: float,
                 brokers: str | None) -> None:
    """Send queued deliveries (by id, --flow or --all); each keeps its original webhook-id."""
    selection = _selection(delivery_ids, flow_id, everything)
    settings = _settings(brokers)
    done = _run(settings, queue.send(settings, selection, idle_s=idle))
    _report("sent", done, delivery_ids)


@held.command("cancel")
@_selection_options
def cancel_command(delivery_ids: tuple[str, ...], flow_id: str | None, everything: bool, idle: float,
                   brokers: str | None) -> None:
    """Cancel queued deliveries (by id, --flow or --all): each gets the outcome `cancelled`."""
    selection = _selection(delivery_ids, flow_id, everything)
    settings = _settings(brokers)
    done = _run(settings, queue.cancel(settings, selection, idle_s=idle))
    _report("cancelled", done, delivery_ids)


def _selection(delivery_ids: tuple[str, ...], flow_id: str | None, everything: bool) -> Any:
    if not (delivery_ids or flow_id or everything):
        raise click.UsageError("name delivery ids, or use --flow FLOW_ID or --all")
    return queue.Selection(delivery_ids=tuple(delivery_ids), flow_id=flow_id, everything=everything)


def _report(verb: str, done: list[Any], asked: tuple[str, ...]) -> None:
    for item in done:
        click.echo(f"{verb} {item.delivery_id} ({item.flow_id}/{item.due['step_id']}, "
                   f"profile {item.due['profile_id']})")
    missing = sorted(set(asked) - {item.delivery_id for item in done})
    for delivery_id in missing:
        click.echo(f"not in the queue: {delivery_id} (unknown, or already sent or cancelled)", err=True)
    click.echo(f"{verb} {len(done)} deliver{'y' if len(done) == 1 else 'ies'}", err=True)
    if missing and not done:
        sys.exit(1)


def _settings(brokers: str | None) -> Any:
    return load_settings(brokers=brokers)


def _run(settings: Any, coro: Any) -> Any:
    """Run a Kafka coroutine; an unreachable broker is one line and exit 1."""
    box: list[Any] = []

    async def main() -> None:
        box.append(await coro)

    try:
        run_async(main())
    except (KafkaError, OSError) as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.brokers}: {exc}") from None
    return box[0]


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} deliver{'y' if len(rows) == 1 else 'ies'} waiting for review")
    columns = ("delivery_id", "flow_id", "step_id", "profile_id", "method", "destination", "due_at")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    Console().print(table)
