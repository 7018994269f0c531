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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jinja2 import Template, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment

from processor.errors import FlowhookError
from processor.flows import klaviyo, template_filters
from processor.flows.lookup import EventView, ProfileView
from processor.flows.template_filters import Missing
from processor.flows.values import (
    MapView,
    SeqView,
    current_budget,
    finalize,
    text,
    tick,
    to_json_value,
    wrap,
)

VARIABLES: Final = ("event", "person", "profile", "flow")  # profile: Klaviyo's other spelling of person
SECRETS: Final = "secrets"
FLOW_FIELDS: Final = ("id", "name")
FILTERS: Final = tuple(template_filters.FILTERS)
MAX_TEMPLATE_CHARS: Final = 16 * 1024
MAX_REPEAT_CHARS: Final = 64 * 1024
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
# Klaviyo's shorthands for profile fields: `{{ first_name }}` is `{{ person.first_name }}`.
PROFILE_SHORTCUTS: Final = frozenset(
    {"first_name", "last_name", "email", "phone_number", "title", "organization_name", "city", "region",
     "country", "zip"}
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


# --- Django syntax -> Jinja syntax ------------------------------------------------------

_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_FILTER_ARG = re.compile(
    rf"(?P<str>{_STRING})|\|\s*(?P<name>\w+)\s*:\s*(?P<arg>{_STRING}|-?\d+(?:\.\d+)?|[A-Za-z_][\w.]*)"
)
_LONE_TAG = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)
# A lone tag that only reads a variable: `event.OrderId`, `person.email`,
# `event|lookup('$value')` (after `translate_expression`). No backslashes in the string, so
# its text is the key as Jinja would read it.
_SIMPLE_PATH = re.compile(
    r"^(?P<root>event|person|profile|flow)(?P<attrs>(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)"
    r"(?:\s*\|\s*lookup\s*\(\s*(?:'(?P<sq>[^'\\]*)'|\"(?P<dq>[^\"\\]*)\")\s*\))?$"
)


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


# --- the environment -------------------------------------------------------------------


# Mappings templates see most, checked by exact type first in `FlowEnvironment._item`
# (none is Undefined or a LoopContext, so the general checks end in the same branch).
_PLAIN_MAPPINGS: Final = frozenset({EventView, ProfileView, MapView, dict})


class FlowEnvironment(SandboxedEnvironment):
    """Jinja's sandbox reduced to JSON data, with limits on `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`obj.name`: a key of JSON data, else a missing value."""
        return self._item(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """`obj[key]`: a key or index of JSON data, else a missing value."""
        return self._item(obj, argument)

    def _item(self, obj: Any, key: Any) -> Any:
        tick()
        if type(obj) in _PLAIN_MAPPINGS:  # the usual case, without abstract-class checks
            try:
                return wrap(obj[key])
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=str(key))
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
        """`*` and `**` with limits, so no template builds huge values."""
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
        finalize=finalize,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.globals.clear()
    env.filters = {**template_filters.FILTERS, **klaviyo.CONTEXT_FILTERS}
    return env


ENV: Final = _make_environment()


# --- compiling and rendering -----------------------------------------------------------


_NO_PATH: Final = object()  # a variable the fast path cannot see: ask Jinja


@dataclass(frozen=True)
class SimplePath:
    """A lone tag that only reads a variable (`event.OrderId`, `person|lookup('$x')`).

    Read without Jinja: each step goes through the same `FlowEnvironment` lookups (and
    budget ticks) that the compiled expression makes, so the value is identical; only
    Jinja's per-call context set-up is skipped.
    """

    root: str
    attrs: tuple[str, ...]
    lookup: str | None

    def read(self, variables: Mapping[str, Any]) -> Any:
        value = variables.get(self.root, _NO_PATH)
        if value is _NO_PATH:
            return _NO_PATH
        for name in self.attrs:
            value = ENV.getattr(value, name)
        if self.lookup is not None:
            value = template_filters.f_lookup(ENV, value, self.lookup)
        return value


def simple_path(expression: str) -> SimplePath | None:
    """The SimplePath of a (translated) lone expression, or None when Jinja must run it."""
    match = _SIMPLE_PATH.match(expression)
    if match is None:
        return None
    attrs = tuple(a.strip() for a in match.group("attrs").split(".")[1:])
    key = match.group("sq") if match.group("sq") is not None else match.group("dq")
    return SimplePath(match.group("root"), attrs, key)


@dataclass(frozen=True)
class Compiled:
    """One string leaf: literal text, a lone expression (keeps its type), or a text template."""

    source: str
    template: Template | None = None
    expression: Any = None  # jinja2 TemplateExpression
    path: SimplePath | None = None  # set when the lone expression only reads a variable
    shortcuts: tuple[str, ...] = ()  # Klaviyo shorthands it uses (`{{ first_name }}`)

    def _variables(self, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        """The variables plus the shorthands this template uses, read from the profile."""
        if not self.shortcuts:
            return variables
        person = variables.get("person")
        return {**variables, **{name: ENV.getattr(person, name) for name in self.shortcuts}}

    def _evaluate(self, variables: Mapping[str, Any]) -> Any:
        variables = self._variables(variables)
        if self.path is not None:
            value = self.path.read(variables)
            if value is not _NO_PATH:
                return value
        return self.expression(**variables)

    def render_value(self, variables: Mapping[str, Any]) -> Any:
        """The leaf as JSON data: a lone tag keeps its value's type; missing -> ""."""
        if self.expression is not None:
            value = self._evaluate(variables)
            return "" if isinstance(value, Undefined) else to_json_value(value)
        return self.render_text(variables)

    def render_text(self, variables: Mapping[str, Any]) -> str:
        """The leaf as text."""
        if self.template is None:
            if self.expression is not None:
                return text(self._evaluate(variables))
            return self.source
        budget = current_budget()
        parts = []
        for chunk in self.template.generate(**self._variables(variables)):
            if budget is not None:
                budget.spend_output(len(chunk))
            parts.append(chunk)
        return "".join(parts)


def compile_leaf(source: str, *, typed: bool = True, json_text: bool = False) -> Compiled:
    """Compile a string leaf; TemplateProblem when it does not parse. Call `check` first for hints.

    `json_text`: a text body, whose tags print as JSON for where they stand (`klaviyo`).
    """
    if not has_tags(source):
        return Compiled(source)
    expression = lone_expression(source) if typed else None
    try:
        if expression is not None:
            translated = translate_expression(expression)
            compiled = ENV.compile_expression(translated, undefined_to_none=False)
            shortcuts = _shortcuts_used("{{ " + translated + " }}")
            return Compiled(source, expression=compiled, path=simple_path(translated), shortcuts=shortcuts)
        translated = translate(source)
        if json_text:
            translated = klaviyo.json_text_template(translated)
        return Compiled(source, template=ENV.from_string(translated), shortcuts=_shortcuts_used(translated))
    except TemplateError as exc:
        raise TemplateProblem(_syntax_message(exc)) from None


def _shortcuts_used(translated: str) -> tuple[str, ...]:
    """The Klaviyo profile shorthands a template reads and does not define itself."""
    tree = ENV.parse(translated)
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    loaded = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}
    return tuple(sorted((loaded & PROFILE_SHORTCUTS) - stored))


def variables_for(*, event: Mapping[str, Any], profile: Mapping[str, Any], flow_id: str,
                  flow_name: str) -> dict[str, Any]:
    """The names a template sees: event, person (also spelled profile) and flow."""
    person = ProfileView(profile)
    return {"event": EventView(event), "person": person, "profile": person,
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


Located = tuple[str, int | None]  # a message and the template line it is about (1-based)


def check(source: str, *, allow_secrets: bool = False) -> list[str]:
    """Every problem with one template, as messages that say how to fix it (empty: fine)."""
    return [message for message, _line in check_located(source, allow_secrets=allow_secrets)]


def check_located(source: str, *, allow_secrets: bool = False) -> list[Located]:
    """Every problem with one template, each with the template line it is on (when known)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return [(f"template is longer than {MAX_TEMPLATE_CHARS} characters", None)]
    if not has_tags(source):
        return []
    dollar = _DOLLAR_ATTR.search(source)
    if dollar:
        name, prop = dollar.groups()
        line = source.count("\n", 0, dollar.start()) + 1
        return [(f"'{name}.{prop}' cannot be written with a dot; use {{{{ {name}|lookup:'{prop}' }}}}", line)]
    try:
        tree = ENV.parse(translate(source))
    except TemplateSyntaxError as exc:
        return [(_syntax_message(exc), exc.lineno)]
    problems = _check_names(tree, allow_secrets) + _check_nodes(tree)
    if not problems:
        try:
            compile_leaf(source)
        except TemplateProblem as exc:
            problems.append((str(exc), None))
    return problems


def warnings_located(source: str) -> list[Located]:
    """Things that work but not as a Klaviyo user may expect (Klaviyo-internal fields)."""
    if not has_tags(source) or len(source) > MAX_TEMPLATE_CHARS:
        return []
    try:
        tree = ENV.parse(translate(source))
    except TemplateSyntaxError:
        return []  # reported as a problem by check_located
    return [(message, line) for message, line in klaviyo.internal_field_warnings(tree)]


def _check_names(tree: nodes.Template, allow_secrets: bool) -> list[Located]:
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    first_line: dict[str, int] = {}
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load":
            first_line.setdefault(node.name, node.lineno)
    problems: list[Located] = []
    for name in sorted(first_line):
        message = _name_problem(name, stored, allow_secrets)
        if message is not None:
            problems.append((message, first_line[name]))
    return problems


def _name_problem(name: str, stored: set[str], allow_secrets: bool) -> str | None:
    if name in VARIABLES or name in stored or name == "loop" or name in PROFILE_SHORTCUTS:
        return None
    if name in klaviyo.INTERNAL_VARIABLES:
        return None  # a warning (warnings_located), not a problem
    if name == SECRETS:
        if allow_secrets:
            return None
        return ("secrets can be used only in headers and signing_secret, "
                "so they never reach a body, URL or topic")
    if name in NOT_AVAILABLE:
        return NOT_AVAILABLE[name]
    return f"unknown variable '{name}'; templates can use event, person (or profile) and flow"


def _check_nodes(tree: nodes.Template) -> list[Located]:
    problems: list[Located] = []
    for getattr_node in tree.find_all(nodes.Getattr):
        target = getattr_node.node
        if isinstance(target, nodes.Name) and target.name == "flow" and getattr_node.attr not in FLOW_FIELDS:
            problems.append((f"flow.{getattr_node.attr} does not exist; flow has only id and name",
                             getattr_node.lineno))
    for filter_node in tree.find_all(nodes.Filter):
        if filter_node.name not in FILTERS:
            problems.append((f"unknown filter '{filter_node.name}'; available: {', '.join(FILTERS)}",
                             filter_node.lineno))
    for kind, label in _FORBIDDEN_NODES.items():
        found = next(iter(tree.find_all(kind)), None)
        if found is not None:
            problems.append((f"{label} is not supported in flow templates", found.lineno))
    return problems
