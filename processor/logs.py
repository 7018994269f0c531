"""structlog set-up: key-value lines in a terminal, JSON lines when FLOWHOOK_LOG_FORMAT=json.

Our own events and every stdlib record (aiokafka, faust, mode, asyncio, warnings) go through
the same processors and the same renderer, so in JSON mode every line on stderr is one JSON
object. Exceptions are rendered without local variables in both modes (locals of a worker
hold records, profiles and rendered requests): as a structured `exception` field in JSON, as
a plain traceback in the terminal. Values under secret-looking keys are masked.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from processor.basics import MASK, is_secret_key

# Longest exception message kept in a log line: a message may quote the data it failed on.
MAX_EXCEPTION_TEXT = 300


def mask_secrets(_logger: object, _name: str, event: dict) -> dict:
    """Never let a value under a secret-looking key reach a log line."""
    for key in event:
        if is_secret_key(key):
            event[key] = MASK
    return event


def _shorten_exception_text(_logger: object, _name: str, event: dict) -> dict:
    """Cut long exception messages in structured tracebacks (they can quote record data)."""
    for exc in event.get("exception") or ():
        if isinstance(exc, dict) and isinstance(exc.get("exc_value"), str):
            exc["exc_value"] = exc["exc_value"][:MAX_EXCEPTION_TEXT]
    return event


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _renderer(log_format: str) -> list[Any]:
    """The last processors: exceptions without locals, then the line itself."""
    if log_format == "json":
        return [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            _shorten_exception_text,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    console = structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
    )
    return [console]


def _shared() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]


def configure(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog, and route stdlib logging (Faust, mode, aiokafka) through it."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer = _renderer(log_format)
    structlog.configure(
        processors=[*_shared(), *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(renderer, numeric)
    if log_format == "json":
        sys.excepthook = _log_uncaught


def _route_stdlib(renderer: list[Any], numeric: int) -> None:
    """One stderr handler on the root logger, formatting foreign records like ours. The
    libraries' INFO lines are chatter at our INFO; at DEBUG everything is shown."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    logging.captureWarnings(True)


class _LineHandler(logging.StreamHandler):
    """Writes each record through a structlog PrintLogger on the same file, so it takes the
    same write lock as our own events: a library line from Faust's consumer thread and one
    of ours written at the same moment stay two lines (with two locks they were seen run
    together as one line)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._printer = structlog.PrintLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.msg(self.format(record))
        except Exception:  # what StreamHandler does: report it, never raise from logging
            self.handleError(record)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """A crash in JSON mode is one JSON line too, with the traceback as a structured field."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    structlog.get_logger("flowhook").critical("uncaught_exception", exc_info=(kind, value, tb))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
