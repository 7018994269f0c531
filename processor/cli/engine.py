"""`flowhook processor`: run one flow-processor worker until SIGTERM or Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import click

from processor.cli.base import brokers_option, load_settings, run_async, stop_on_signals, tune_gc_for_worker
from processor.cli.options import metrics_port_option


@click.command()
@brokers_option
@click.option(
    "--store",
    type=click.Choice(["memory", "rocksdb"]),
    default=None,
    help="Where profile state lives locally (env FLOWHOOK_STORE; default rocksdb).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the RocksDB store (env FLOWHOOK_DATA_DIR).",
)
@metrics_port_option
def processor(
    brokers: str | None, store: str | None, data_dir: Path | None, metrics_port: int | None
) -> None:
    """Run the flow processor (a Faust worker): events in, webhook-due records out."""
    settings = load_settings(brokers=brokers, store=store, data_dir=data_dir, metrics_port=metrics_port)
    raise SystemExit(run_async(_serve(settings), worker=True))


async def _serve(settings: object) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully (commit offsets, flush the producer)."""
    from processor.engine.app import run_processor  # heavy (faust, aiohttp): only this command needs it

    tune_gc_for_worker()
    await run_processor(settings, stop_on_signals())  # type: ignore[arg-type]
    return 0
