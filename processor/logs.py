"""structlog set-up: key-value lines in a terminal, JSON lines when FLOWHOOK_LOG_FORMAT=json."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_SECRET_KEYS = ("secret", "token", "password", "authorization")


def mask_secrets(_logger: object, _name: str, event: dict) -> dict:
    """Never let a value under a secret-looking key reach a log line."""
    for key in event:
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "••••"
    return event


def configure(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog (and route stdlib logging, e.g. Faust's, through the same level)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    if log_format == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(
            serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode()
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
