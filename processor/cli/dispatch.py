"""`flowhook dispatcher` and `flowhook replay`."""

from __future__ import annotations

import click

from processor import constants as c
from processor.cli.base import brokers_option, load_settings, run_async, tune_gc_for_worker
from processor.cli.options import metrics_port_option
from processor.dispatch.breaker import DEFAULT_THRESHOLD
from processor.dispatch.replay import ReplayFilter, parse_time
from processor.dispatch.replay import replay as replay_outcome
from processor.durations import DurationError, parse_duration_ms


@click.command()
@brokers_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=c.DEFAULT_INFLIGHT,
    show_default=True,
    help="Requests in flight at once (per lane: first tries and retries each get this window).",
)
@click.option(
    "--per-destination",
    type=click.IntRange(min=1),
    default=c.DEFAULT_PER_DESTINATION,
    show_default=True,
    help="Requests in flight at once to one destination (host:port).",
)
@click.option(
    "--drain",
    "drain_idle_s",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Burst mode: exit once the input has been idle this long and nothing is in flight.",
)
@metrics_port_option
@click.option(
    "--breaker-threshold",
    type=click.IntRange(min=1),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    envvar="FLOWHOOK_BREAKER_THRESHOLD",
    help="Failures in a row that open a destination's circuit (env FLOWHOOK_BREAKER_THRESHOLD).",
)
@click.option(
    "--breaker-open",
    default="5s",
    show_default=True,
    envvar="FLOWHOOK_BREAKER_OPEN",
    metavar="DURATION",
    help="How long an open circuit defers tries before one probe (env FLOWHOOK_BREAKER_OPEN).",
)
def dispatcher(
    brokers: str | None,
    concurrency: int,
    per_destination: int,
    drain_idle_s: float | None,
    breaker_threshold: int,
    breaker_open: str,
    metrics_port: int | None,
) -> None:
    """Run the webhook dispatcher pool until SIGTERM/SIGINT (or until drained, with --drain)."""
    # heavy (aiohttp, prometheus_client): only this command needs the worker
    from processor.dispatch.worker import DispatcherOptions, run_dispatcher

    try:
        open_ms = parse_duration_ms(breaker_open)
    except DurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--breaker-open") from None
    settings = load_settings(brokers=brokers, metrics_port=metrics_port)
    options = DispatcherOptions(concurrency=concurrency, per_destination=per_destination,
                                drain_idle_s=drain_idle_s, breaker_threshold=breaker_threshold,
                                breaker_cooldown_ms=open_ms)
    tune_gc_for_worker()
    run_async(run_dispatcher(settings, handle_signals=True, options=options), worker=True)


@click.command()
@brokers_option
@click.option("--flow", "flow_id", default=None, help="Only deliveries of this flow id.")
@click.option(
    "--since",
    default=None,
    help="Only deliveries that died at or after TIME (ISO-8601 or e.g. 2h ago: '2h').",
)
@click.option(
    "--until", default=None, help="Only deliveries that died before TIME (ISO-8601 or a duration ago)."
)
@click.option("--outcome", type=click.Choice(["dead", "failed", "invalid"]), default="dead",
              show_default=True, help="Which deliveries to send again: those whose latest outcome is this.")
@click.option("--idle", default=2.0, show_default=True, help="Seconds without new records that end reading.")
def replay(
    brokers: str | None, flow_id: str | None, since: str | None, until: str | None, outcome: str, idle: float
) -> None:
    """Send dead (or failed, or invalid) deliveries again, as fresh attempts with their webhook-id."""
    try:
        selection = ReplayFilter(flow_id=flow_id, since_ms=parse_time(since), until_ms=parse_time(until))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = load_settings(brokers=brokers)
    counts: dict[str, int] = {}

    async def main() -> None:
        counts.update(await replay_outcome(settings, selection, outcome=outcome, idle_s=idle))

    run_async(main())
    click.echo(
        f"replayed {counts.get('replayed', 0)} {outcome} deliveries "
        f"({counts.get('skipped', 0)} skipped: outside the filter or another outcome since)",
        err=True,
    )
