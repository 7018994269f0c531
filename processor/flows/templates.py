"""Klaviyo's Django-style template tags, run on Jinja2's sandbox.

Templates are written the Klaviyo way (`{{ person|lookup:'$phone_number'|default:'' }}`);
`translate` rewrites Django's filter-argument syntax (`|name:arg`) into Jinja's
(`|name(arg)`), and everything else is Jinja's own parser and compiler.

The sandbox is narrower than Jinja's default: templates see only JSON data (mappings,
lists, text, numbers) through `FlowEnvironment.getattr`/`getitem`, never a Python
attribute; no globals; only the filters SPEC.md lists. Every render runs under a
`Budget` (steps, output characters, wall time) so no template can run long or grow large.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

import orjson
from jinja2 import ChainableUndefined, Template, Undefined, nodes, pass_environment
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment

from processor.errors import FlowhookError
from processor.flows.lookup import EventView, ProfileView

VARIABLES: Final = ("event", "person", "flow")
SECRETS: Final = "secrets"
FLOW_FIELDS: Final = ("id", "name")
FILTERS: Final = (
    "default", "lookup", "upper", "lower", "title", "floatformat", "join", "length", "date", "tojson",
)
MAX_TEMPLATE_CHARS: Final = 16 * 1024
MAX_STEPS: Final = 1_000_000
MAX_OUTPUT_CHARS: Final = 1024 * 1024
MAX_RENDER_SECONDS: Final = 0.5
MAX_REPEAT_CHARS: Final = 64 * 1024
MAX_DEPTH: Final = 200
NOT_AVAILABLE: Final = {
    "feeds": "web feeds and product feeds are not available in Flowhook; "
    "send the data with the event, or fetch it on the receiving side",
    "catalog": "product feeds (catalog lookups) are not available in Flowhook; "
    "send the product data with the event instead",
    "coupon_code": "coupon codes are not available in Flowhook; "
    "have the receiving service create the coupon",
    "unique_coupon_code": "coupon codes are not available in Flowhook; "
    "have the receiving service create the coupon",
    "organization": "organization variables are not available; write the text literally",
    "forloop": "Django's forloop is Jinja's loop here: use loop.index, loop.first, loop.last",
}
PROFILE_SHORTCUTS: Final = frozenset(
    {"first_name", "last_name", "email", "phone_number", "title", "city", "region", "country", "zip"}
)
_FORBIDDEN_NODES: Final = {
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
}


class TemplateProblem(FlowhookError, ValueError):
    """A template that cannot be used; the message says what to change."""


class RenderLimitError(FlowhookError, RuntimeError):
    """A render ran past its step, size or time budget."""


# --- Django syntax -> Jinja syntax ------------------------------------------------------

_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_FILTER_ARG = re.compile(
    rf"(?P<str>{_STRING})|\|\s*(?P<name>\w+)\s*:\s*(?P<arg>{_STRING}|-?\d+(?:\.\d+)?|[A-Za-z_][\w.]*)"
)
_LONE_TAG = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)


def _filter_call(match: re.Match[str]) -> str:
    if match.group("str") is not None:
        return match.group("str")
    return f"|{match.group('name')}({match.group('arg')})"


def translate(source: str) -> str:
    """Rewrite `|name:arg` inside tags as `|name(arg)`; text outside tags is untouched."""
    return _TAG.sub(lambda tag: _FILTER_ARG.sub(_filter_call, tag.group(0)), source)


def translate_expression(expression: str) -> str:
    """Rewrite `|name:arg` as `|name(arg)` in a bare expression (the inside of one tag)."""
    return _FILTER_ARG.sub(_filter_call, expression)


def lone_expression(source: str) -> str | None:
    """The expression of a string that is exactly one `{{ ... }}` tag, else None."""
    match = _LONE_TAG.match(source)
    return match.group(1).strip() if match else None


def has_tags(source: str) -> bool:
    """True when the text holds a template tag, comment or block."""
    return "{{" in source or "{%" in source or "{#" in source


# --- budget ----------------------------------------------------------------------------


@dataclass
class Budget:
    """What one render may still spend."""

    steps: int = MAX_STEPS
    output: int = MAX_OUTPUT_CHARS
    deadline: float = 0.0

    def tick(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise RenderLimitError(f"template did more than {MAX_STEPS} steps")
        if (n > 1 or self.steps % 64 == 0) and time.monotonic() > self.deadline:
            raise RenderLimitError(f"template took longer than {MAX_RENDER_SECONDS}s")

    def spend_output(self, n: int) -> None:
        self.output -= n
        if self.output < 0:
            raise RenderLimitError(f"template output is larger than {MAX_OUTPUT_CHARS} characters")
        self.tick()


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("flowhook_budget", default=None)


def new_budget() -> contextvars.Token[Budget | None]:
    """Start a fresh budget for one render; pass the token to `end_budget`."""
    return _budget.set(Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))


def end_budget(token: contextvars.Token[Budget | None]) -> None:
    _budget.reset(token)


def _spend(n: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend_output(n)


def _tick(n: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick(n)


# --- data views: JSON data only, with counted iteration ---------------------------------


class SeqView(Sequence[Any]):
    """A list as templates see it: items wrapped, iteration counted against the budget."""

    __slots__ = ("data",)

    def __init__(self, data: Sequence[Any]) -> None:
        self.data = data

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return SeqView(self.data[index])
        return wrap(self.data[index])

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[Any]:
        for item in self.data:
            _tick()
            yield wrap(item)


class MapView(Mapping[str, Any]):
    """A JSON object as templates see it: values wrapped, iteration counted."""

    __slots__ = ("data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return wrap(self.data[key])

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[str]:
        for key in self.data:
            _tick()
            yield key


def wrap(value: Any) -> Any:
    """Lists and objects become views; scalars and views pass through."""
    if isinstance(value, list | tuple):
        return SeqView(value)
    if isinstance(value, dict):
        return MapView(value)
    return value


def plain(value: Any) -> Any:
    """The data behind a view (one level); anything else unchanged."""
    if isinstance(value, SeqView | MapView):
        return value.data
    if isinstance(value, ProfileView | EventView):
        return value.plain()
    return value


# --- values to JSON and to text ---------------------------------------------------------


def to_json_value(value: Any, depth: int = 0) -> Any:
    """Any template value as JSON data: views unwrapped, non-finite floats as null."""
    if depth > MAX_DEPTH:
        raise RenderLimitError(f"value nested deeper than {MAX_DEPTH} levels")
    value = plain(value)
    if isinstance(value, Undefined) or value is None:
        return None
    if isinstance(value, str):
        _spend(len(value))
        return value if type(value) is str else str(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        _tick(len(value) + 1)
        return {str(k): to_json_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | SeqView):
        _tick(len(value) + 1)
        return [to_json_value(v, depth + 1) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def dumps(value: Any, *, indent: bool = False) -> str:
    """JSON text of JSON data; falls back to the stdlib for integers beyond 64 bits."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=True, allow_nan=False, indent=2 if indent else None,
                          separators=None if indent else (",", ":"))


def text(value: Any) -> str:
    """How a value prints inside text: missing and null as nothing, the rest as JSON would."""
    if isinstance(value, str):
        return value
    if isinstance(value, Undefined) or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return dumps(to_json_value(value))


def _finalize(value: Any) -> str:
    out = text(value)
    budget = _budget.get()
    if budget is not None:
        budget.spend_output(len(out))
    return out


# --- filters ---------------------------------------------------------------------------


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
    return text(value).upper()


def f_lower(value: Any) -> str:
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
        _tick()
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


_DATE_CODES: Final = {
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


# --- the environment -------------------------------------------------------------------


class FlowEnvironment(SandboxedEnvironment):
    """Jinja's sandbox reduced to JSON data, with limits on `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._item(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._item(obj, argument)

    def _item(self, obj: Any, key: Any) -> Any:
        _tick()
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, LoopContext):
            return super().getattr(obj, key)
        if isinstance(obj, Mapping):
            try:
                return wrap(obj[key])
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=str(key))
        if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
            return self._index(obj, key)
        if isinstance(obj, str) and isinstance(key, slice):
            return obj[key]
        return self.undefined(obj=obj, name=str(key))

    def _index(self, obj: Sequence[Any], key: Any) -> Any:
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, slice) or (isinstance(key, int) and not isinstance(key, bool)):
            try:
                return wrap(obj[key])
            except (IndexError, ValueError):
                pass
        return self.undefined(obj=obj, name=str(key))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and (not isinstance(right, int | float) or abs(right) > 64):
            raise SecurityError("exponents above 64 are not allowed in templates")
        if operator == "*":
            _check_repeat(left, right)
        return super().call_binop(context, operator, left, right)


def _check_repeat(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        sized = isinstance(seq, str | list | tuple | SeqView) and isinstance(count, int)
        if sized and len(seq) * count > MAX_REPEAT_CHARS:
            raise SecurityError("repeating text or lists this many times is not allowed")


def _make_environment() -> FlowEnvironment:
    env = FlowEnvironment(
        autoescape=False,
        undefined=Missing,
        finalize=_finalize,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.globals.clear()
    env.filters = {
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
    }
    return env


ENV: Final = _make_environment()


# --- compiling and rendering -----------------------------------------------------------


@dataclass(frozen=True)
class Compiled:
    """One string leaf: literal text, a lone expression (keeps its type), or a text template."""

    source: str
    template: Template | None = None
    expression: Any = None  # jinja2 TemplateExpression

    def render_value(self, variables: Mapping[str, Any]) -> Any:
        """The leaf as JSON data: a lone tag keeps its value's type; missing -> ""."""
        if self.expression is not None:
            value = self.expression(**variables)
            return "" if isinstance(value, Undefined) else to_json_value(value)
        return self.render_text(variables)

    def render_text(self, variables: Mapping[str, Any]) -> str:
        """The leaf as text."""
        if self.template is None:
            if self.expression is not None:
                return text(self.expression(**variables))
            return self.source
        budget = _budget.get()
        parts = []
        for chunk in self.template.generate(**variables):
            if budget is not None:
                budget.spend_output(len(chunk))
            parts.append(chunk)
        return "".join(parts)


def compile_leaf(source: str, *, typed: bool = True) -> Compiled:
    """Compile a string leaf; TemplateProblem when it does not parse. Call `check` first for hints."""
    if not has_tags(source):
        return Compiled(source)
    expression = lone_expression(source) if typed else None
    try:
        if expression is not None:
            return Compiled(source, expression=ENV.compile_expression(translate_expression(expression),
                                                                       undefined_to_none=False))
        return Compiled(source, template=ENV.from_string(translate(source)))
    except TemplateError as exc:
        raise TemplateProblem(_syntax_message(exc)) from None


def variables_for(*, event: Mapping[str, Any], profile: Mapping[str, Any], flow_id: str,
                  flow_name: str) -> dict[str, Any]:
    """The names a template sees: event, person and flow."""
    return {"event": EventView(event), "person": ProfileView(profile),
            "flow": {"id": flow_id, "name": flow_name}}


# --- checking (for `flows validate`) -----------------------------------------------------

_DOLLAR_ATTR = re.compile(r"\b(event|person)\.(\$[\w]+)")
_UNKNOWN_TAG = re.compile(r"unknown tag '(\w+)'")


def _syntax_message(exc: TemplateError) -> str:
    message = getattr(exc, "message", None) or str(exc)
    tag = _UNKNOWN_TAG.search(message)
    if tag and tag.group(1) in NOT_AVAILABLE:
        return NOT_AVAILABLE[tag.group(1)]
    line = getattr(exc, "lineno", None)
    where = f" (template line {line})" if isinstance(exc, TemplateSyntaxError) and line and line > 1 else ""
    return (f"template does not parse: {message}{where}; check that every {{{{ has its }}}} "
            "and every {% if %}/{% for %} its {% endif %}/{% endfor %}")


def check(source: str, *, allow_secrets: bool = False) -> list[str]:
    """Every problem with one template, as messages that say how to fix it (empty: fine)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return [f"template is longer than {MAX_TEMPLATE_CHARS} characters"]
    if not has_tags(source):
        return []
    dollar = _DOLLAR_ATTR.search(source)
    if dollar:
        name, prop = dollar.groups()
        return [f"'{name}.{prop}' cannot be written with a dot; use {{{{ {name}|lookup:'{prop}' }}}}"]
    try:
        tree = ENV.parse(translate(source))
    except TemplateSyntaxError as exc:
        return [_syntax_message(exc)]
    problems = _check_names(tree, allow_secrets) + _check_nodes(tree)
    if not problems:
        try:
            compile_leaf(source)
        except TemplateProblem as exc:
            problems.append(str(exc))
    return problems


def _check_names(tree: nodes.Template, allow_secrets: bool) -> list[str]:
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    problems = []
    for name in sorted({n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}):
        if name in VARIABLES or name in stored or name == "loop":
            continue
        if name == SECRETS:
            if not allow_secrets:
                problems.append("secrets can be used only in headers and signing_secret, "
                                "so they never reach a body, URL or topic")
        elif name in NOT_AVAILABLE:
            problems.append(NOT_AVAILABLE[name])
        elif name in PROFILE_SHORTCUTS:
            problems.append(f"unknown variable '{name}'; profile fields are under person: "
                            f"write {{{{ person.{name} }}}}")
        else:
            problems.append(f"unknown variable '{name}'; templates can use event, person and flow")
    return problems


def _check_nodes(tree: nodes.Template) -> list[str]:
    problems = []
    for getattr_node in tree.find_all(nodes.Getattr):
        target = getattr_node.node
        if isinstance(target, nodes.Name) and target.name == "flow" and getattr_node.attr not in FLOW_FIELDS:
            problems.append(f"flow.{getattr_node.attr} does not exist; flow has only id and name")
    for filter_node in tree.find_all(nodes.Filter):
        if filter_node.name not in FILTERS:
            problems.append(f"unknown filter '{filter_node.name}'; available: {', '.join(FILTERS)}")
    for kind, label in _FORBIDDEN_NODES.items():
        if any(True for _ in tree.find_all(kind)):
            problems.append(f"{label} is not supported in flow templates")
    return problems
