"""The `flowhook` command line. Each command parses flags and calls into its module.

Exit codes: 0 ok, 1 failure, 2 bad usage or bad input (message names file, line, field).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
import orjson
from aiokafka.errors import KafkaError

from processor import __version__
from processor.errors import FlowhookError, InputError, KafkaUnavailable
from processor.logs import configure
from processor.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class BrokersUnreachable(FlowhookError, click.ClickException):
    """A command could not reach Kafka: one line naming the brokers (exit 1). A ClickException
    too, so click (and command wrappers that handle those) prints it as one line."""

    exit_code = 1


_brokers = {"last": ""}  # the brokers of the settings a command loaded, for that one line


def run_async(coro: Coroutine[Any, Any, int | None], *, worker: bool = False) -> int:
    """Run a command's coroutine on uvloop when available; map errors to exit codes.

    For tools (`worker` False) an unreachable broker is one line naming the brokers, not
    aiokafka's traceback and log lines; workers keep their own logs and retry."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop_factory = None
    if not worker:
        # We say it once, below. A filter, not a level: kafka.connect_failure's filter must
        # still see a refused SASL login to name it.
        logging.getLogger("aiokafka").addFilter(lambda _record: False)
    # asyncio.Runner, not asyncio.run: only the Runner takes a loop factory on Python 3.11.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(coro) or EXIT_OK
        except (KafkaError, ConnectionError, TimeoutError) as exc:
            if worker:
                raise
            # Clients left half-started are reported as unclosed when the loop closes.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            refused = _login_refused(exc)
            if refused:
                raise BrokersUnreachable(refused) from None
            raise BrokersUnreachable(
                f"cannot reach Kafka at {_brokers['last'] or 'the configured brokers'} "
                f"({type(exc).__name__}); is the broker running? (FLOWHOOK_BROKERS / --brokers)"
            ) from None


def _login_refused(exc: BaseException) -> str | None:
    """The one-line message for a refused SASL login (kafka.connect_failure), else None."""
    from processor.kafka import _AuthFailures, connect_failure

    if _AuthFailures.last is None:
        return None
    settings = Settings.from_env()
    settings = settings.with_(brokers=_brokers["last"] or settings.brokers)
    return connect_failure(settings, exc) if settings.security_protocol.startswith("SASL_") else None


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings.from_env(**overrides)
    except FlowhookError as exc:
        raise click.UsageError(str(exc)) from None
    configure(settings.log_format, settings.log_level)
    _brokers["last"] = settings.brokers
    return settings


def brokers_option(func: Any) -> Any:
    return click.option(
        "--brokers", default=None, help="Kafka bootstrap servers (env FLOWHOOK_BROKERS)."
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowhook")
def cli() -> None:
    """Flowhook: Kafka-native flow webhooks."""


@cli.command()
@click.option("--port", default=9092, show_default=True,
              help="Loopback port to listen on (with --nodes 3: PORT, PORT+1, PORT+2).")
@click.option("--kafka", is_flag=True, help="Apache Kafka (KRaft) instead of the embedded broker.")
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Kafka nodes (broker+controller each); 3 gives replication 3, min ISR 2.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep Kafka's data here (default: a temporary folder, removed at exit).")
def broker(port: int, kafka: bool, nodes: str, data_dir: Path | None) -> None:
    """Run only a broker on loopback until Ctrl-C: the embedded one, or Apache Kafka with --kafka."""
    from processor.devtools.devserver import run_broker_only, run_kafka_only

    load_settings()
    if not kafka:
        if nodes != "1" or data_dir is not None:
            raise click.UsageError("--nodes and --data need --kafka")
        sys.exit(run_broker_only(port))
    sys.exit(run_kafka_only(port, int(nodes), data_dir, announce=click.echo))


def report_error(exc: BaseException) -> None:
    """`error: ...` on stderr; with FLOWHOOK_LOG_FORMAT=json one JSON object, like every log line."""
    if os.environ.get("FLOWHOOK_LOG_FORMAT") == "json":
        line = orjson.dumps({"event": "command_failed", "level": "error", "error": str(exc),
                             "error_type": type(exc).__name__})
        click.echo(line.decode(), err=True)
    else:
        click.echo(f"error: {exc}", err=True)


def main() -> None:
    """Console entry point: FlowhookErrors become a message and exit code, not a traceback."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        code = EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code
    except (InputError, KafkaUnavailable) as exc:
        report_error(exc)
        code = EXIT_BAD_INPUT
    except FlowhookError as exc:
        report_error(exc)
        code = EXIT_FAILURE
    except KeyboardInterrupt:
        code = EXIT_FAILURE
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _register_commands() -> None:
    """Each area owns its commands; they are gathered here under one group."""
    from processor.cli.console import console
    from processor.cli.dispatch import dispatcher, replay
    from processor.cli.engine import processor
    from processor.cli.flows import flows, preview
    from processor.cli.held import held
    from processor.cli.ops import lag, results
    from processor.cli.tools import bench, demo, dev, send
    from processor.cli.topics import topics

    for command in (demo, dev, send, results, lag, processor, dispatcher, replay, flows, preview, bench,
                    topics, held, console):
        cli.add_command(command)


_register_commands()

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_OK", "BrokersUnreachable",
    "cli", "load_settings", "main", "run_async",
]
