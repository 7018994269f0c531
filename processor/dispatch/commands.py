"""`flowhook dispatcher` and `flowhook replay` (placeholders until built)."""

from __future__ import annotations

import click


@click.command()
def dispatcher() -> None:
    """Run the webhook dispatcher pool."""
    raise click.ClickException("not built yet")


@click.command()
def replay() -> None:
    """Send dead deliveries again with their original webhook-id."""
    raise click.ClickException("not built yet")
