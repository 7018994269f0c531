"""`flowhook demo|dev|send|results` (placeholders until built)."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Everything on one machine: broker, workers, receiver, sample flows and events."""
    raise click.ClickException("not built yet")


@click.command()
def dev() -> None:
    """Embedded broker + processor + dispatcher until Ctrl-C."""
    raise click.ClickException("not built yet")


@click.command()
def send() -> None:
    """Produce events from a JSON-lines file."""
    raise click.ClickException("not built yet")


@click.command()
def results() -> None:
    """Read delivery and run outcomes."""
    raise click.ClickException("not built yet")
