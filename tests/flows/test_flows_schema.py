"""schemas/flow.schema.json agrees with the loader, and the loader survives any input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from processor.flows.filters import FilterContext, evaluate
from processor.flows.loader import check_definition, check_flow_file, parse_text
from processor.flows.model import Condition
from processor.records import schema

FIXTURES = Path(__file__).parent.parent / "fixtures" / "flows"
EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "flows"
VALIDATOR = Draft202012Validator(schema("flow"))


def load(path: Path) -> Any:
    """The data of a flow file."""
    return parse_text(path.read_text(), json_file=path.suffix == ".json")[0]


def test_schema_is_valid_json_schema_2020_12() -> None:
    """The flow schema itself is a valid 2020-12 schema."""
    Draft202012Validator.check_schema(schema("flow"))
    assert schema("flow")["$schema"].endswith("2020-12/schema")


def test_good_files_match_the_schema() -> None:
    """Every valid fixture and example matches the schema too."""
    paths = [FIXTURES / "good-full.yaml", FIXTURES / "string-body.json", *sorted(EXAMPLES.glob("*.yaml"))]
    for path in paths:
        assert list(VALIDATOR.iter_errors(load(path))) == [], path


@pytest.mark.parametrize("name", ["broken.yaml", "property-change.yaml"])
def test_broken_files_fail_the_schema(name: str) -> None:
    """What the loader refuses structurally, the schema refuses as well."""
    assert list(VALIDATOR.iter_errors(load(FIXTURES / name)))


GOOD = load(FIXTURES / "good-full.yaml")
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


PATHS = _paths(GOOD)[1:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=junk)
def test_loader_never_crashes_and_agrees_with_the_schema(where: tuple[Any, ...], value: Any) -> None:
    """Replacing any field of a good flow with junk gives problems or a flow, never an exception."""
    data = copy.deepcopy(GOOD)
    node = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    checked = check_definition(data, source="fuzz.yaml", allow_http=False)
    assert (checked.flow is None) == bool(checked.problems)
    assert all(p.message and "could not check" not in p.message for p in checked.problems)
    if checked.ok:
        assert list(VALIDATOR.iter_errors(data)) == []


@settings(max_examples=100, deadline=None)
@given(data=junk)
def test_loader_survives_any_document(data: Any) -> None:
    """Any document at all is checked without an exception."""
    checked = check_definition(data, source="fuzz.yaml")
    assert checked.problems or checked.flow is not None


ops = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains", "not_contains", "in", "not_in",
                       "exists", "not_exists", "count_eq", "count_gte", "count_lte"])


@settings(max_examples=300, deadline=None)
@given(op=ops, value=junk, actual=junk, on=st.sampled_from(["profile", "event"]))
def test_filters_never_raise(op: str, value: Any, actual: Any, on: str) -> None:
    """Whatever the condition and the data, evaluate returns None or a reason."""
    condition = (Condition(op=op, metric="M", value=value) if op.startswith("count")
                 else Condition(op=op, property="x", value=value, on=on))  # type: ignore[arg-type]
    ctx = FilterContext(profile={"x": actual, "properties": actual}, event={"properties": {"x": actual}},
                        history={"M": [1, 2, 3]}, now_ms=2)
    result = evaluate([condition], ctx)
    assert result is None or isinstance(result, str)


def test_every_problem_of_a_file_names_file_line_and_field() -> None:
    """Problems from a file always carry file, line and field."""
    for problem in check_flow_file(FIXTURES / "broken.yaml", allow_http=False).problems:
        assert problem.file.endswith("broken.yaml") and problem.line and problem.field


def test_pure_modules_import_no_kafka_or_http() -> None:
    """The flow language's pure modules load without aiokafka, faust or aiohttp."""
    import subprocess
    import sys

    modules = ["loader", "filters", "render", "templates", "model", "lookup", "build"]
    code = ("import sys, importlib; "
            f"[importlib.import_module('processor.flows.' + m) for m in {modules!r}]; "
            "print(sorted(m for m in ('aiokafka', 'faust', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
