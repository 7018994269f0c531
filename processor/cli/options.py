"""Command-line options the two workers share."""

from __future__ import annotations

from typing import Any

import click


def metrics_port_option(func: Any) -> Any:
    """`--metrics-port`: serve /metrics, /healthz and /readyz there (env FLOWHOOK_METRICS_PORT)."""
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve /metrics, /healthz and /readyz on this port (env FLOWHOOK_METRICS_PORT; "
        "host FLOWHOOK_METRICS_HOST, default 127.0.0.1).",
    )(func)
