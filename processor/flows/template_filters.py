"""The template filters SPEC.md lists, with Klaviyo's (Django's) behaviour.

default, lookup, upper, lower, title, floatformat, join, length, date, tojson. Each takes
any value (missing, null, text, numbers, views of lists and objects) and never raises for
data reasons. The further filters of Klaviyo's glossary are in `django_filters`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

from jinja2 import ChainableUndefined, Undefined, pass_environment
from jinja2.sandbox import SandboxedEnvironment

from processor.flows import django_filters
from processor.flows.values import dumps, plain, text, tick, to_json_value


class Missing(ChainableUndefined):
    """A missing variable: prints as nothing, and `missing.anything` is missing too."""

    __slots__ = ()


def _is_missing(value: Any) -> bool:
    return isinstance(value, Undefined) or value is None or value == ""


def f_default(value: Any, fallback: Any = "") -> Any:
    """Klaviyo's default: the fallback when the value is missing, null or empty text."""
    return fallback if _is_missing(value) else value


@pass_environment
def f_lookup(env: SandboxedEnvironment, value: Any, key: Any) -> Any:
    """`obj|lookup:'key'`: a property by name (names with `$` or spaces), or a list index."""
    if isinstance(value, Undefined):
        return value
    return env.getitem(value, key)


def f_upper(value: Any) -> str:

    """The value as text in capitals."""
    return text(value).upper()


def f_lower(value: Any) -> str:

    """The value as text in small letters."""
    return text(value).lower()


def f_title(value: Any) -> str:
    """Django's title: capitalise words, but not the letter after an apostrophe or a digit."""
    titled = re.sub(r"([a-z])'([A-Z])", lambda m: m.group(0).lower(), text(value).title())
    return re.sub(r"\d([A-Z])", lambda m: m.group(0).lower(), titled)


def _decimal(value: Any) -> Decimal | None:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def f_floatformat(value: Any, arg: Any = -1) -> str:
    """Django's floatformat: 34.2 -> "34.2", with 2 -> "34.20", with -2 -> "34" for 34.0."""
    number = _decimal(value)
    if number is None:
        return ""
    spec = str(arg).strip()
    grouped = spec.endswith("g")
    try:
        places = int(spec.rstrip("g") or "-1")
    except ValueError:
        return text(value)
    places = max(-20, min(20, places))
    if places < 0 and number == number.to_integral_value():
        places = 0
    digits = abs(places)
    rounded = number.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{rounded:,.{digits}f}" if grouped else f"{rounded:.{digits}f}"


def f_join(value: Any, separator: Any = "") -> str:
    """List items as text joined by the separator; text stays as it is."""
    value = plain(value)
    if isinstance(value, str):
        return value
    if not isinstance(value, list | tuple):
        return text(value)
    parts = []
    for item in value:
        tick()
        parts.append(text(item))
    return text(separator).join(parts)


def f_length(value: Any) -> int:
    """Items in a list or object, characters in text; 0 for anything else."""
    value = plain(value)
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    return 0


def f_tojson(value: Any) -> str:
    """The value as JSON text (missing -> null)."""
    return dumps(to_json_value(value))


_MONTHS_AP = (
    "Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec.",
)


def _ordinal(day: int) -> str:
    if 10 < day % 100 < 14:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


_DATE_CODES: Final[dict[str, Callable[[datetime], str]]] = {
    "d": lambda t: f"{t.day:02d}",
    "j": lambda t: str(t.day),
    "D": lambda t: t.strftime("%a"),
    "l": lambda t: t.strftime("%A"),
    "S": lambda t: _ordinal(t.day),
    "w": lambda t: str((t.weekday() + 1) % 7),
    "m": lambda t: f"{t.month:02d}",
    "n": lambda t: str(t.month),
    "M": lambda t: t.strftime("%b"),
    "b": lambda t: t.strftime("%b").lower(),
    "F": lambda t: t.strftime("%B"),
    "N": lambda t: _MONTHS_AP[t.month - 1],
    "y": lambda t: f"{t.year % 100:02d}",
    "Y": lambda t: str(t.year),
    "H": lambda t: f"{t.hour:02d}",
    "G": lambda t: str(t.hour),
    "h": lambda t: f"{(t.hour % 12) or 12:02d}",
    "g": lambda t: str((t.hour % 12) or 12),
    "i": lambda t: f"{t.minute:02d}",
    "s": lambda t: f"{t.second:02d}",
    "A": lambda t: "AM" if t.hour < 12 else "PM",
    "a": lambda t: "a.m." if t.hour < 12 else "p.m.",
    "c": lambda t: t.isoformat(),
    "U": lambda t: str(int(t.timestamp())),
    "O": lambda t: t.strftime("%z"),
    "T": lambda t: t.strftime("%Z"),
}


def _as_datetime(value: Any) -> datetime | None:
    """ISO text, epoch seconds (or ms when large) or a datetime -> aware datetime."""
    value = plain(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000 if abs(value) > 100_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def f_date(value: Any, fmt: Any = "N j, Y") -> str:
    """Django's date filter (format letters Y m d H i s F M N j D l S A ...); "" when not a date."""
    moment = _as_datetime(value)
    if moment is None:
        return ""
    out, escaped = [], False
    for char in text(fmt)[:200]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            code = _DATE_CODES.get(char)
            out.append(code(moment) if code else char)
    return "".join(out)


def _more_filters() -> dict[str, Any]:
    """The further Django/Klaviyo filters (processor.flows.django_filters)."""
    return {**django_filters.FILTERS, "count": f_length}


FILTERS: Final = {
    "default": f_default,
    "lookup": f_lookup,
    "upper": f_upper,
    "lower": f_lower,
    "title": f_title,
    "floatformat": f_floatformat,
    "join": f_join,
    "length": f_length,
    "date": f_date,
    "tojson": f_tojson,
    **_more_filters(),
}
