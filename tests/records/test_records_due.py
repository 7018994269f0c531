"""The webhook-due record type: its decoder against the generated schema, the strict guard
in front of it, the wire format of its copies, and the schema files against the types."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import msgspec
import orjson
import pytest

from processor import records, strict_json
from processor.records import schemas
from processor.records.due import dead_copy, decode_due, deferred_copy, fresh_attempt, retry_copy
from tests.dispatch_helpers import due_record, typed_due

NOW = 1_800_000_000_000  # the full record's not_before is not "more than 7 days ahead" of it


def looks_usable(due: Any) -> bool:
    """What the type alone accepts (the dispatcher's decoder adds the guard and `implausible`)."""
    try:
        msgspec.json.decode(orjson.dumps(due), type=records.WebhookDue)
    except msgspec.ValidationError:
        return False
    return True


def _integral_float(due: Any, path: tuple[Any, ...]) -> bool:
    """An integer field holding 2.0 or 0.0: JSON Schema's `integer` takes it, the type does not
    (stricter; Flowhook never writes one)."""
    value = due
    for key in path:
        value = value[key]
    return isinstance(value, float) and value.is_integer()

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


def _variants() -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    base = _full_record()
    variants: list[tuple[dict[str, Any], tuple[Any, ...]]] = [(base, ())]
    for path in _paths(base):
        variants.extend((_replaced(base, path, new), path) for new in REPLACEMENTS)
        if not isinstance(path[-1], int):
            variants.append((_removed(base, path), ()))
    return variants


def test_valid_records_pass_both() -> None:
    for due in (_full_record(), due_record("http://127.0.0.1:1/x"), due_record("https://a.b/", mode="held")):
        assert records.validation_error("webhook", due) is None
        assert looks_usable(due)


def test_never_accepts_what_the_schema_refuses() -> None:
    """Every field replaced by a value of every type, or removed: the type must refuse
    whatever the schema refuses, and accept what it accepts (integral floats aside)."""
    refused_by_schema = 0
    for due, path in _variants():
        schema_ok = records.validation_error("webhook", due) is None
        if not schema_ok:
            refused_by_schema += 1
            assert not looks_usable(due), due
        elif not (path and _integral_float(due, path)):
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


def test_the_schema_files_are_generated_from_the_types() -> None:
    """schemas/*.schema.json are what `python -m processor.records.schemas --write` makes."""
    assert schemas.differences() == [], "run: python -m processor.records.schemas --write"


def test_the_dispatcher_decodes_what_flowhook_writes_and_names_what_it_refuses() -> None:
    due = typed_due("https://hooks.example.com/x", retry_ms=[1000])
    assert decode_due(records.encode(due), NOW) == due
    assert decode_due(orjson.dumps(records.as_dict(due), option=orjson.OPT_INDENT_2), NOW) == due
    cases = [
        (None, "empty record"),
        (b"{not json", "not JSON"),
        (b"[1]", "not a webhook-due record: Expected `object`"),
        (b"\xff\xfe", "not JSON"),
        (orjson.dumps({**records.as_dict(due), "attempt": 5000}), "not a usable webhook-due record: attempt"),
    ]
    text = records.encode(due).decode()
    # What msgspec alone would take: a duplicate key (it keeps the last) and an infinity.
    cases.append((text.replace('{"delivery_id"', '{"attempt":1,"delivery_id"', 1).encode(), "duplicate key"))
    cases.append((text.replace('"rate_limit":null', '"rate_limit":1e400').encode(), "infinity"))
    cases.append((text.replace('"attempt":1', f'"attempt":{2**70}').encode(), "does not fit in 64 bits"))
    for value, reason in cases:
        with pytest.raises(strict_json.NotUsable) as info:
            decode_due(value, NOW)
        assert reason in str(info.value), (value, str(info.value))


def test_copies_keep_the_wire_format() -> None:
    """The engine's record writes its nullable fields as null; copies add only their fields,
    and a replayed try drops the dead letter's own."""
    due = typed_due("https://hooks.example.com/x", retry_ms=[1000])
    written = orjson.loads(records.encode(due))
    assert written["not_before"] is None and written["first_attempt_at"] is None and written["error"] is None
    assert not {"dead_reason", "deferrals", "last_attempt", "replayed_at"} & set(written)
    again = retry_copy(due, not_before_ms=NOW, first_attempt_ms=NOW - 5, http_status=503, error="busy",
                       response_excerpt="x" * 5000)
    dead = orjson.loads(records.encode(dead_copy(again, "retries exhausted")))
    assert dead["attempt"] == 2 and dead["dead_reason"] == "retries exhausted"
    assert dead["last_attempt"]["http_status"] == 503
    assert len(dead["last_attempt"]["response_excerpt"]) == 1024
    deferred = orjson.loads(records.encode(deferred_copy(due, not_before_ms=NOW, first_attempt_at="t")))
    assert deferred["deferrals"] == 1 and deferred["first_attempt_at"] == "t"
    fresh = orjson.loads(records.encode(fresh_attempt(dead_copy(again, "x"), NOW)))
    assert fresh["attempt"] == 1 and fresh["not_before"] is None and fresh["replayed_at"]
    assert not {"dead_reason", "deferrals", "last_attempt"} & set(fresh)
    for value in (written, dead, deferred, fresh):
        assert records.validation_error("webhook", value) is None
