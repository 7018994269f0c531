"""Shared pieces of flow validation: where problems go, and small readers of typed fields.

Each reader takes a `Checker`, the raw value and its path; on bad data it records a problem
that says how to fix it and returns None, so one run reports everything.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from processor.durations import DurationError, parse_duration_ms
from processor.flows import templates

Path = tuple[str | int, ...]

ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
TIME_OF_DAY: Final = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def field_name(path: Path) -> str:
    """('steps', 1, 'webhook', 'url') -> 'steps[1].webhook.url'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Checker:
    """Collects problems and warnings as (path, message) while a definition is built."""

    allow_http: bool = False
    problems: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    step_ids: dict[str, Path] = field(default_factory=dict)
    # For problems and warnings inside a multi-line text (a template), the line within that
    # text, by index into `problems` / `warnings`: messages then point at the line itself.
    problem_lines: dict[int, int] = field(default_factory=dict)
    warning_lines: dict[int, int] = field(default_factory=dict)

    def add(self, path: Path, message: str, text_line: int | None = None) -> None:
        """A problem at `path` (at line `text_line` of the text there, when given)."""
        if text_line is not None:
            self.problem_lines[len(self.problems)] = text_line
        self.problems.append((path, message))

    def warn(self, path: Path, message: str, text_line: int | None = None) -> None:
        """A warning at `path` (the definition is still valid)."""
        if text_line is not None:
            self.warning_lines[len(self.warnings)] = text_line
        self.warnings.append((path, message))


# --- small typed readers ---------------------------------------------------------------


def type_name(value: Any) -> str:

    """How a value's type is named in messages: 'text', 'a list', ..."""
    if value is None:
        return "nothing"
    return {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def mapping(ck: Checker, value: Any, path: Path, what: str) -> dict[str, Any] | None:

    """The value if it is a mapping, else None with a problem."""
    if isinstance(value, dict):
        return value
    ck.add(path, f"{what} must be a mapping (key: value lines), got {type_name(value)}")
    return None


def as_list(ck: Checker, value: Any, path: Path, what: str) -> list[Any] | None:

    """The value if it is a list, else None with a problem."""
    if isinstance(value, list):
        return value
    ck.add(path, f"{what} must be a list (lines starting with '- '), got {type_name(value)}")
    return None


def text_field(ck: Checker, obj: dict[str, Any], key: str, path: Path, *, required: bool = True,
          hint: str = "") -> str | None:

    """obj[key] if it is non-empty text; None with a problem when missing (if required) or wrong."""
    if key not in obj:
        if required:
            ck.add((*path, key), f"missing; {hint}" if hint else "missing; this field is required")
        return None
    value = obj[key]
    if isinstance(value, str) and value.strip():
        return value
    ck.add((*path, key), f"must be non-empty text, got {type_name(value) if value != '' else 'empty text'}")
    return None


def known_keys(ck: Checker, obj: dict[str, Any], allowed: Sequence[str], path: Path, what: str) -> None:

    """A problem for every key not in `allowed`, with a did-you-mean hint."""
    for key in obj:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"{what} takes {', '.join(allowed)}"
        ck.add((*path, str(key)), f"unknown field '{key}'; {hint}")


def duration(ck: Checker, value: Any, path: Path, *, allow_negative: bool = False) -> int | None:

    """A duration in ms (> 0 unless negatives are allowed), or None with a problem."""
    try:
        ms = parse_duration_ms(value)
    except DurationError as exc:
        ck.add(path, str(exc))
        return None
    if (ms < 0 and not allow_negative) or (ms == 0 and not allow_negative):
        ck.add(path, f"must be longer than zero, got {value!r}")
        return None
    return ms


def identifier(ck: Checker, value: Any, path: Path, what: str) -> str | None:

    """An id (letters, digits, - _ .), or None with a problem."""
    if isinstance(value, str) and ID_PATTERN.match(value):
        return value
    ck.add(path, f"{what} {value!r} is not a valid id; use letters, digits, '-', '_' or '.' "
                 "(at most 128, starting with a letter or digit)")
    return None


def timezone(ck: Checker, value: Any, path: Path) -> str | None:

    """An IANA time zone name, or None with a problem."""
    if isinstance(value, str):
        try:
            ZoneInfo(value)
            return value
        except (ZoneInfoNotFoundError, ValueError):
            pass
    ck.add(path, f"{value!r} is not a time zone; use an IANA name such as UTC or Europe/Berlin")
    return None


def time_of_day(ck: Checker, value: Any, path: Path) -> str | None:

    """"HH:MM", or None with a problem."""
    if isinstance(value, str) and TIME_OF_DAY.match(value):
        return value
    ck.add(path, f"{value!r} is not a time of day; write it quoted as \"HH:MM\", e.g. \"09:00\"")
    return None


def check_template(ck: Checker, source: str, path: Path, *, allow_secrets: bool = False) -> None:

    """A problem for everything wrong with a template (secrets only where allowed), and a
    warning for each Klaviyo-internal field it reads; each at its line within the template."""
    for message, line in templates.check_located(source, allow_secrets=allow_secrets):
        ck.add(path, message, line)
    for message, line in templates.warnings_located(source):
        ck.warn(path, message, line)


def claim_id(ck: Checker, ident: str, path: Path) -> None:

    """Record a step id; a problem when it is already taken."""
    if ident in ck.step_ids:
        ck.add(path, f"step id {ident!r} is used twice (first at {field_name(ck.step_ids[ident])}); "
                     "step ids must be unique within a flow")
    else:
        ck.step_ids[ident] = path
