"""The dispatcher's cheap check of webhook-due records against the full schema validator."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from processor import records
from processor.dispatch.due_check import looks_usable
from tests.dispatch_helpers import due_record

# Values of every JSON type (and edge values of numbers), put in place of each field.
REPLACEMENTS: list[Any] = [
    None, True, False, 0, 1, -1, 2.0, 2.5, 0.0, "", "x", "POST", "send",
    "dlv_" + "a" * 24, [], ["x"], [1], {}, {"a": "b"}, {"a": 1},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a nested dict/list, leaves and containers alike."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _replaced(record: dict[str, Any], path: tuple[Any, ...], new: Any) -> dict[str, Any]:
    changed = copy.deepcopy(record)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return changed


def _removed(record: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    changed = copy.deepcopy(record)
    target = changed
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return changed


def _full_record() -> dict[str, Any]:
    """A record with every optional part filled, so every path gets broken."""
    due = due_record(
        "https://hooks.example.com/x",
        headers={"X-A": "1"},
        secret_headers={"Authorization": "Bearer {{ secrets.T }}"},
        signing_secrets=["S"],
        retry_ms=[1000, 5000],
        rate_limit=2.5,
        attempt=2,
        not_before_ms=1_800_000_000_000,
    )
    due["dead_reason"] = None
    return due


def _variants() -> list[dict[str, Any]]:
    base = _full_record()
    variants: list[dict[str, Any]] = [base]
    for path in _paths(base):
        variants.extend(_replaced(base, path, new) for new in REPLACEMENTS)
        if not isinstance(path[-1], int):
            variants.append(_removed(base, path))
    return variants


def test_valid_records_pass_both() -> None:
    for due in (_full_record(), due_record("http://127.0.0.1:1/x"), due_record("https://a.b/", mode="held")):
        assert records.validation_error("webhook", due) is None
        assert looks_usable(due)


def test_never_accepts_what_the_schema_refuses() -> None:
    """Every field replaced by a value of every type, or removed: the cheap check must refuse
    whatever the schema refuses, and accept what it accepts (ids aside, see below)."""
    refused_by_schema = 0
    for due in _variants():
        schema_ok = records.validation_error("webhook", due) is None
        if not schema_ok:
            refused_by_schema += 1
            assert not looks_usable(due), due
        else:
            assert looks_usable(due), due
    assert refused_by_schema > 100  # the variants really exercise refusals


@pytest.mark.parametrize("field", ["delivery_id", "run_id"])
def test_ids_must_match_exactly(field: str) -> None:
    due = _full_record()
    prefix = "dlv_" if field == "delivery_id" else "run_"
    for bad in (prefix + "A" * 24, prefix + "a" * 23, prefix + "a" * 25, "x" + prefix + "a" * 24,
                prefix + "a" * 24 + "\n"):
        assert not looks_usable(_replaced(due, (field,), bad)), bad


def test_not_a_dict() -> None:
    for value in (None, 1, "x", [], [{}]):
        assert not looks_usable(value)


def test_unhashable_enum_values_are_refused_not_raised() -> None:
    due = _full_record()
    for path, value in itertools.product([("mode",), ("request", "method")], [[], {}]):
        assert not looks_usable(_replaced(due, path, value))
