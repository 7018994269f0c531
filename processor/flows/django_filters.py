"""More of the Django filters Klaviyo documents for its templates, beyond SPEC.md's core set.

Klaviyo's filter glossary lists Django's built-ins plus a few of its own (`append`,
`concat`, `at_least`, `floatadd`, `multiply`, ...). These are the ones that make sense in a
webhook body (text, numbers, lists); each takes any value and never raises for data
reasons: a value of the wrong kind gives "" (text) or the value unchanged, as Django does.
"""

from __future__ import annotations

import base64
import binascii
import html
import math
import re
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote

from jinja2 import Undefined

from processor.flows.values import plain, text, tick

MAX_TEXT: Final = 64 * 1024


def _number(value: Any) -> int | float | None:
    """A number from a number or numeric text; None for anything else (booleans included)."""
    value = plain(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        if not number.is_finite():
            return None
        return int(number) if number == number.to_integral_value() and "." not in value else float(number)
    return None


def _arith(op: Callable[[Any, Any], Any], value: Any, arg: Any, *, integer: bool = False) -> Any:
    left, right = _number(value), _number(arg)
    if left is None or right is None:
        return ""
    if integer:
        left, right = int(left), int(right)
    try:
        result = op(left, right)
    except (ZeroDivisionError, OverflowError, ValueError):
        return ""
    if isinstance(result, float) and not math.isfinite(result):
        return ""
    return result


def f_add(value: Any, arg: Any = 0) -> Any:
    """Django's add: whole numbers added (decimals dropped, as Klaviyo documents); text joined."""
    if _number(value) is None or _number(arg) is None:
        left, right = plain(value), plain(arg)
        if isinstance(left, str) and isinstance(right, str):
            return (left + right)[:MAX_TEXT]
        if isinstance(left, list) and isinstance(right, list):
            tick(len(left) + len(right))
            return left + right
        return ""
    return _arith(lambda a, b: a + b, value, arg, integer=True)


def f_floatadd(value: Any, arg: Any = 0) -> Any:
    """Klaviyo's floatadd: numbers added, decimals kept."""
    return _arith(lambda a, b: a + b, value, arg)


def f_multiply(value: Any, arg: Any = 1) -> Any:
    """Klaviyo's multiply."""
    return _arith(lambda a, b: a * b, value, arg)


def f_divide(value: Any, arg: Any = 1) -> Any:
    """Klaviyo's divide ("" when dividing by zero)."""
    return _arith(lambda a, b: a / b, value, arg)


def f_abs(value: Any) -> Any:
    """The absolute value of a number."""
    number = _number(value)
    return "" if number is None else abs(number)


def f_round(value: Any, places: Any = 0) -> Any:
    """A number rounded to `places` decimals (half to even, as Python and Klaviyo do)."""
    number, digits = _number(value), _number(places)
    if number is None or digits is None:
        return ""
    digits = max(-20, min(20, int(digits)))
    rounded = Decimal(str(number)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN)
    return int(rounded) if digits <= 0 else float(rounded)


def f_ceil(value: Any) -> Any:
    """The smallest whole number at or above the value."""
    number = _number(value)
    return "" if number is None else math.ceil(number)


def f_floor(value: Any) -> Any:
    """The largest whole number at or below the value."""
    number = _number(value)
    return "" if number is None else math.floor(number)


def f_at_least(value: Any, arg: Any = 0) -> Any:
    """Klaviyo's at_least: the larger of the value and the argument."""
    return _arith(max, value, arg)


def f_at_most(value: Any, arg: Any = 0) -> Any:
    """Klaviyo's at_most: the smaller of the value and the argument."""
    return _arith(min, value, arg)


def f_append(value: Any, arg: Any = "") -> str:
    """Klaviyo's append / concat: the argument added to the end of the text."""
    return (text(value) + text(arg))[:MAX_TEXT]


def f_capfirst(value: Any) -> str:
    """The first letter in capitals."""
    out = text(value)
    return out[:1].upper() + out[1:]


def f_cut(value: Any, arg: Any = "") -> str:
    """Every occurrence of the argument removed."""
    needle = text(arg)
    return text(value).replace(needle, "") if needle else text(value)


def f_replace(value: Any, old: Any = "", new: Any = "") -> str:
    """Klaviyo's replace: every occurrence of `old` replaced by `new`."""
    needle = text(old)
    return text(value).replace(needle, text(new))[:MAX_TEXT] if needle else text(value)


def f_first(value: Any) -> Any:
    """The first item of a list, or the first character of text; "" when empty."""
    value = plain(value)
    if isinstance(value, str | list | tuple) and value:
        return value[0]
    return ""


def f_last(value: Any) -> Any:
    """The last item of a list, or the last character of text; "" when empty."""
    value = plain(value)
    if isinstance(value, str | list | tuple) and value:
        return value[-1]
    return ""


def f_slice(value: Any, spec: Any = ":") -> Any:
    """Django's slice, e.g. `|slice:':2'` for the first two items or characters."""
    value = plain(value)
    if not isinstance(value, str | list | tuple):
        return ""
    try:
        parts = [int(p) if p.strip() else None for p in text(spec).split(":")]
    except ValueError:
        return value
    if len(parts) > 3 or parts[2:3] == [0]:
        return value
    return value[slice(*parts)]


def f_truncatechars(value: Any, length: Any = 0) -> str:
    """Text cut to `length` characters, the last one being an ellipsis when it was cut."""
    out, limit = text(value), _number(length)
    if limit is None or limit < 1 or len(out) <= limit:
        return out
    return out[: int(limit) - 1] + "…"


def f_truncatewords(value: Any, count: Any = 0) -> str:
    """Text cut to `count` words, with " …" when it was cut."""
    words, limit = text(value).split(), _number(count)
    if limit is None or limit < 1 or len(words) <= limit:
        return " ".join(words)
    return " ".join(words[: int(limit)]) + " …"


def f_trim(value: Any) -> str:
    """Text without spaces at either end (Klaviyo's trim, Django's strip)."""
    return text(value).strip()


def f_striptags(value: Any) -> str:
    """HTML tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", text(value)))


def f_split(value: Any, separator: Any = " ") -> list[str]:
    """Klaviyo's split: text into a list at each separator."""
    sep = text(separator) or " "
    parts = text(value).split(sep)
    tick(len(parts))
    return parts


def f_urlencode(value: Any, safe: Any = "/") -> str:
    """The value percent-encoded for a URL (Django keeps '/' unless told otherwise)."""
    return quote(text(value), safe=text(safe))


def f_base64_encode(value: Any) -> str:
    """The value's UTF-8 bytes in Base-64."""
    return base64.b64encode(text(value).encode()).decode()


def f_base64_decode(value: Any) -> str:
    """Base-64 text decoded ("" when it is not Base-64 of UTF-8 text)."""
    try:
        return base64.b64decode(text(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""


def f_default_if_none(value: Any, fallback: Any = "") -> Any:
    """The fallback only when the value is null or missing (empty text is kept)."""
    return fallback if value is None or isinstance(value, Undefined) else value


def f_yesno(value: Any, choices: Any = "yes,no,maybe") -> str:
    """Django's yesno: "yes" for true, "no" for false, "maybe" (or "no") for null."""
    options = text(choices).split(",")
    if len(options) < 2:
        return text(value)
    plain_value = plain(value)
    if plain_value is None:
        return options[2] if len(options) > 2 else options[1]
    return options[0] if _truthy(plain_value) else options[1]


def _truthy(value: Any) -> bool:
    if isinstance(value, Mapping | list | tuple | str):
        return len(value) > 0
    return bool(value)


def f_pluralize(value: Any, suffixes: Any = "s") -> str:
    """Django's pluralize: "s" unless the count is 1 (`|pluralize:'y,ies'` for two forms)."""
    forms = text(suffixes).split(",")
    singular, plural = (forms[0], forms[1]) if len(forms) > 1 else ("", forms[0])
    raw = plain(value)
    count = len(raw) if isinstance(raw, list | tuple) else _number(raw)
    return singular if count == 1 else plural


def f_divisibleby(value: Any, arg: Any = 1) -> bool | str:
    """True when the value divides evenly by the argument."""
    left, right = _number(value), _number(arg)
    if left is None or right is None or int(right) == 0:
        return ""
    return int(left) % int(right) == 0


FILTERS: Final = {
    "add": f_add,
    "floatadd": f_floatadd,
    "multiply": f_multiply,
    "divide": f_divide,
    "abs": f_abs,
    "round": f_round,
    "ceil": f_ceil,
    "floor": f_floor,
    "at_least": f_at_least,
    "at_most": f_at_most,
    "append": f_append,
    "concat": f_append,
    "capfirst": f_capfirst,
    "cut": f_cut,
    "replace": f_replace,
    "first": f_first,
    "last": f_last,
    "slice": f_slice,
    "truncatechars": f_truncatechars,
    "truncatewords": f_truncatewords,
    "trim": f_trim,
    "strip": f_trim,
    "striptags": f_striptags,
    "split": f_split,
    "urlencode": f_urlencode,
    "base64_encode": f_base64_encode,
    "base64_decode": f_base64_decode,
    "default_if_none": f_default_if_none,
    "yesno": f_yesno,
    "pluralize": f_pluralize,
    "divisibleby": f_divisibleby,
}
