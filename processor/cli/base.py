"""What every `flowhook` command shares: settings, the event loop, exit codes, Kafka errors as one line.

Exit codes: 0 ok, 1 failure, 2 bad usage or bad input (message names file, line, field).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

import click
import orjson
from aiokafka.errors import KafkaError

from processor.errors import FlowhookError
from processor.kafka import _AuthFailures, connect_failure
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
        import uvloop  # optional: a dependency only where it builds (not on Windows)

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


def tune_gc_for_worker() -> None:
    """Fewer, larger young-generation collections for a worker process: every record or
    delivery allocates many short-lived objects (decoded JSON, outputs, template views), and
    with the default threshold (700) the collector runs thousands of times a second. Objects
    alive at start (modules, Faust, Jinja, schemas) are frozen out of collections. Measured
    on the dispatcher: about 15% less CPU per delivery on the loopback benchmark."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def stop_on_signals() -> asyncio.Event:
    """An event that Ctrl-C or SIGTERM sets, on the running loop (where the loop can take
    signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def run_kafka(settings: Settings, coro: Coroutine[Any, Any, int | None]) -> int:
    """Run a Kafka coroutine; an unreachable broker is a one-line failure (exit 1), not a traceback."""
    try:
        return run_async(coro)
    except (KafkaError, OSError) as exc:
        raise click.ClickException(connect_failure(settings, exc)) from None


def report_error(exc: BaseException) -> None:
    """`error: ...` on stderr; with FLOWHOOK_LOG_FORMAT=json one JSON object, like every log line."""
    if os.environ.get("FLOWHOOK_LOG_FORMAT") == "json":
        line = orjson.dumps({"event": "command_failed", "level": "error", "error": str(exc),
                             "error_type": type(exc).__name__})
        click.echo(line.decode(), err=True)
    else:
        click.echo(f"error: {exc}", err=True)


__all__ = [
    "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_OK", "BrokersUnreachable",
    "brokers_option", "load_settings", "report_error", "run_async", "run_kafka", "stop_on_signals",
    "tune_gc_for_worker",
]
