"""The `flowhook` command group and its entry point: every area's commands gathered under one name.

Command modules import the logic and `processor.cli.base`; only this module imports them, and
nothing outside `processor.cli` imports this package (`make lint`'s import contracts check it).
Exit codes: 0 ok, 1 failure, 2 bad usage or bad input (message names file, line, field).
"""

from __future__ import annotations

import sys

import click

from processor import __version__
from processor.cli.base import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, report_error
from processor.cli.console import console
from processor.cli.dispatch import dispatcher, replay
from processor.cli.engine import processor
from processor.cli.flows import flows, preview
from processor.cli.held import held
from processor.cli.ops import lag, results
from processor.cli.tools import bench, broker, demo, dev, send
from processor.cli.topics import topics
from processor.errors import FlowhookError, InputError, KafkaUnavailable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowhook")
def cli() -> None:
    """Flowhook: Kafka-native flow webhooks."""


for _command in (broker, demo, dev, send, results, lag, processor, dispatcher, replay, flows, preview, bench,
                 topics, held, console):
    cli.add_command(_command)


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


__all__ = ["cli", "main"]
