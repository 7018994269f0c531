"""`flowhook flows validate|apply|list` and `flowhook preview` (placeholder until built)."""

from __future__ import annotations

import click


@click.group()
def flows() -> None:
    """Check, publish and show flow definitions."""


@click.command()
def preview() -> None:
    """Render the requests a flow would send, sending nothing."""
    raise click.ClickException("not built yet")
