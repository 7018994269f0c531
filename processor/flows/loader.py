"""Reading and validating flow definitions (YAML or JSON files, or plain dicts).

`load_flow_file(path)` and `flow_from_dict(data, source=...)` return a `Flow` or raise
`InputError` with every problem found, each naming the file, the line (YAML line numbers)
and the field, and saying how to fix it. `check_flow_file` also returns warnings (used by
`flowhook flows validate`).

Checks run in this order: the file parses; the semantic builder (processor.flows.build)
checks every field and records every problem; when it finds none, the definition is also
checked against schemas/flow.schema.json as a safety net.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import yaml

from processor.errors import InputError, Problem
from processor.flows.build import build_flow
from processor.flows.checks import Checker, field_name
from processor.flows.model import Flow
from processor.records import validation_error

PathKey = tuple[str | int, ...]
FLOW_SUFFIXES = (".yaml", ".yml", ".json")


class _FlowYamlLoader(yaml.SafeLoader):
    """YAML as users mean it: `on`/`yes`/`no` stay text, 10:30 and 2026-01-01 stay text."""


def _yaml_12_resolvers() -> None:
    dropped = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
               "tag:yaml.org,2002:timestamp"}
    _FlowYamlLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in dropped]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _FlowYamlLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    _FlowYamlLoader.add_implicit_resolver(
        "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
    _FlowYamlLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."))
    _FlowYamlLoader.add_constructor("tag:yaml.org,2002:int", _int_scalar)


def _int_scalar(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """YAML 1.2 ints: only what the resolver above tagged (a scalar of digits) reaches here."""
    return int(loader.construct_scalar(cast(yaml.ScalarNode, node)))


_yaml_12_resolvers()


@dataclass
class CheckedFile:
    """What checking one file found: the flow (None when it has problems), problems, warnings."""

    path: str
    flow: Flow | None = None
    definition: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file has no problems (warnings allowed)."""
        return not self.problems


def allow_http_from_env() -> bool:
    """FLOWHOOK_ALLOW_HTTP=1 lets flows use http:// URLs (tests, demo, local receivers)."""
    return os.environ.get("FLOWHOOK_ALLOW_HTTP", "").strip().lower() in ("1", "true", "yes", "on")


def flow_from_dict(data: Any, *, source: str, version: int = 1, allow_http: bool | None = None) -> Flow:
    """A validated Flow from a definition (e.g. a `flows` topic record); InputError lists every problem."""
    checked = check_definition(data, source=source, version=version, allow_http=allow_http)
    if checked.flow is None:
        raise InputError(checked.problems)
    return checked.flow


def load_flow_file(path: str | os.PathLike[str], *, allow_http: bool | None = None) -> Flow:
    """A validated Flow from a YAML or JSON file; InputError names file, line and field of each problem."""
    checked = check_flow_file(path, allow_http=allow_http)
    if checked.flow is None:
        raise InputError(checked.problems)
    return checked.flow


def check_flow_file(path: str | os.PathLike[str], *, allow_http: bool | None = None) -> CheckedFile:
    """Read and check one file, collecting every problem and warning (never raises for content)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return CheckedFile(source, problems=[Problem(source, None, "", f"cannot read the file: {exc}")])
    try:
        data, lines = parse_text(text, json_file=source.lower().endswith(".json"))
    except ParseError as exc:
        return CheckedFile(source, problems=[Problem(source, exc.line, "", exc.message)])
    return check_definition(data, source=source, lines=lines, allow_http=allow_http)


def check_definition(data: Any, *, source: str, version: int = 1, lines: dict[PathKey, int] | None = None,
                     allow_http: bool | None = None) -> CheckedFile:
    """Check a definition already parsed; `lines` maps field paths to line numbers."""
    lines = lines or {}
    checker = Checker(allow_http=allow_http_from_env() if allow_http is None else allow_http)
    for dup in lines.get(_DUPLICATES, []):  # type: ignore[union-attr]
        checker.add(dup, "this key is given twice; YAML keeps only the last one, so remove one")
    try:
        flow = build_flow(checker, data, source=source, version=version)
    except Exception as exc:  # a gap in the checks must still end as a problem, not a crash
        checker.add((), f"could not check this definition ({type(exc).__name__}: {exc})")
        flow = None
    if not checker.problems:
        for path, message in schema_problems(data):
            checker.add(path, message)
        flow = None if checker.problems else flow
    problems = [_problem(source, lines, p, m, checker.problem_lines.get(i))
                for i, (p, m) in enumerate(checker.problems)]
    warnings = [_problem(source, lines, p, m, checker.warning_lines.get(i))
                for i, (p, m) in enumerate(checker.warnings)]
    problems.sort(key=lambda p: (p.line or 0))
    definition = data if isinstance(data, dict) else None
    return CheckedFile(source, flow if not problems else None, definition, problems, warnings)


def _problem(source: str, lines: dict[PathKey, int], path: PathKey, message: str,
             text_line: int | None = None) -> Problem:
    return Problem(source, line_in_text(lines, path, text_line), field_name(path), message)


def line_in_text(lines: dict[PathKey, int], path: PathKey, text_line: int | None) -> int | None:
    """The file line of line `text_line` of the text at `path` (a block body), else of the field."""
    start = lines.get((*path, TEXT_START))
    if text_line is None or not isinstance(start, int):
        return line_of(lines, path)
    return start + text_line - 1


def line_of(lines: dict[PathKey, int], path: PathKey) -> int | None:
    """The line of the field, or of its nearest parent that has one."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if isinstance(line, int):
            return line
    return None


# --- parsing with line numbers ---------------------------------------------------------

_DUPLICATES: PathKey = ("\u0000duplicates",)
# (*path, TEXT_START) -> the file line where the text of a scalar starts: the line after
# `body: |` for a block scalar, the value's own line otherwise.
TEXT_START = "\u0000text"


class ParseError(InputError):
    """A document that is not valid YAML/JSON; `line` and `message` say where and why."""

    def __init__(self, line: int | None, message: str, source: str = "<text>") -> None:
        super().__init__([Problem(source, line, "", message)])
        self.line = line
        self.message = message


def parse_text(text: str, *, json_file: bool = False) -> tuple[Any, dict[PathKey, int]]:
    """(data, lines) of a YAML or JSON document; lines maps field paths to 1-based lines."""
    if json_file:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ParseError(exc.lineno, f"not valid JSON: {exc.msg}") from None
        try:
            return data, _lines_of(yaml.compose(text, Loader=_FlowYamlLoader))
        except yaml.YAMLError:
            return data, {}
    try:
        loader = _FlowYamlLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ParseError(line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return data, _lines_of(node) if node is not None else {}


def _lines_of(node: yaml.Node | None) -> dict[PathKey, int]:
    lines: dict[Any, Any] = {}
    duplicates: list[PathKey] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, duplicates, set())
    lines[_DUPLICATES] = duplicates
    return lines


def _walk(node: yaml.Node, path: PathKey, lines: dict[Any, Any], duplicates: list[PathKey],
          seen: set[int]) -> None:
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in keys:
                duplicates.append(child)
            keys.add(key)
            lines[child] = key_node.start_mark.line + 1
            _text_start(value_node, child, lines)
            _enter(value_node, child, lines, duplicates, seen, lines[child])
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _text_start(item, child, lines)
            _enter(item, child, lines, duplicates, seen, lines.get(path, lines[child]))


def _text_start(node: yaml.Node, path: PathKey, lines: dict[Any, Any]) -> None:
    """Where a scalar's text starts, when its lines are the file's lines: block (`|`) and plain
    scalars. A quoted one (all of JSON) may hold `\\n` escapes: its problems stay on its field line."""
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">", None, ""):
        block = node.style in ("|", ">")
        lines[(*path, TEXT_START)] = node.start_mark.line + (2 if block else 1)


def _enter(node: yaml.Node, path: PathKey, lines: dict[Any, Any], duplicates: list[PathKey],
           seen: set[int], line: int) -> None:
    """Walk into a child; a collection met twice is an alias, refused so nothing can expand."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        if id(node) in seen:
            raise ParseError(line, "YAML anchors and aliases (&, *) are not supported; write the value out")
        seen.add(id(node))
    _walk(node, path, lines, duplicates, seen)


# --- the JSON Schema safety net ----------------------------------------------------------


def schema_problems(data: Any) -> list[tuple[PathKey, str]]:
    """The first problem schemas/flow.schema.json finds, as (path, message); empty when it matches."""
    message = validation_error("flow", data)
    return [] if message is None else [((), f"{message} (schemas/flow.schema.json)")]
