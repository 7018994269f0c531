"""`flowhook processor` (placeholder until built)."""

from __future__ import annotations

import click


@click.command()
def processor() -> None:
    """Run the flow processor (Faust worker)."""
    raise click.ClickException("not built yet")
