"""Fast paths of the hot path give exactly what the general path gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from processor.flows import templates as t
from processor.flows import values
from processor.flows.lookup import EventView, ProfileView

EVENT: dict[str, Any] = {
    "id": "evt_1",
    "metric": "Placed Order",
    "time": "2026-11-27T10:00:00.000Z",
    "properties": {
        "OrderId": "1001",
        "$value": 129.5,
        "Items": [{"sku": "A1", "qty": 2}, {"sku": "B7", "qty": 1}],
        "Nested": {"deep": {"x": None}, "flag": True},
        "with space": 7,
        "nan": float("nan"),
        "big": 2**70,
    },
}
PROFILE: dict[str, Any] = {
    "id": "p_1",
    "email": "a@example.com",
    "first_name": "Ann",
    "properties": {"address": "1 Main St", "$city": "Oslo", "tags": ["x", "y"], "empty": ""},
}
SIMPLE = [
    "{{ event.OrderId }}",
    "{{event.OrderId}}",
    "  {{ event . Items }}  ",
    "{{ event.Nested }}",
    "{{ event.Nested.deep }}",
    "{{ event.Nested.deep.x }}",
    "{{ event.Nested.flag }}",
    "{{ event.missing }}",
    "{{ event.missing.deeper }}",
    "{{ event.nan }}",
    "{{ event.big }}",
    "{{ event }}",
    "{{ person }}",
    "{{ person.email }}",
    "{{ person.address }}",
    "{{ person.city }}",
    "{{ person.tags }}",
    "{{ person.empty }}",
    "{{ person.nothing }}",
    "{{ flow.id }}",
    "{{ flow.name }}",
    "{{ flow.other }}",
    "{{ event|lookup:'$value' }}",
    '{{ event|lookup:"with space" }}',
    "{{ event|lookup:'$event_id' }}",
    "{{ event|lookup:'$time' }}",
    "{{ event|lookup:'metric' }}",
    "{{ event|lookup:'absent' }}",
    "{{ event.missing|lookup:'x' }}",
    "{{ event.Nested|lookup:'flag' }}",
    "{{ person|lookup:'$email' }}",
    "{{ person|lookup:'$city' }}",
    "{{ event.Items|lookup:'0' }}",
]
NOT_SIMPLE = [
    "{{ event.OrderId|upper }}",
    "{{ person.email|default:'x' }}",
    "{{ event.Items[0] }}",
    "{{ event.Items.0 }}",
    "{{ event|lookup:'a\\'b' }}",
    "{{ secrets.X }}",
    "{{ other.x }}",
    "{{ event.OrderId ~ 'x' }}",
]


def _variables() -> dict[str, Any]:
    return t.variables_for(event=EVENT, profile=PROFILE, flow_id="f1", flow_name="Flow one")


def _both(source: str, how: str) -> tuple[Any, Any, int, int]:
    """(fast result, Jinja result, fast budget steps left, Jinja budget steps left)."""
    fast = t.compile_leaf(source)
    slow = dataclasses.replace(fast, path=None)
    results = []
    for leaf in (fast, slow):
        token = values.new_budget()
        try:
            results.append(getattr(leaf, how)(_variables()))
            steps = values.current_budget().steps  # type: ignore[union-attr]
        finally:
            values.end_budget(token)
        results.append(steps)
    return results[0], results[2], results[1], results[3]


@pytest.mark.parametrize("source", SIMPLE)
@pytest.mark.parametrize("how", ["render_value", "render_text"])
def test_simple_tags_skip_jinja_and_match_it(source: str, how: str) -> None:
    assert t.compile_leaf(source).path is not None
    fast, slow, fast_steps, slow_steps = _both(source, how)
    assert repr(fast) == repr(slow)  # repr: NaN and types compare too
    assert fast_steps == slow_steps


@pytest.mark.parametrize("source", NOT_SIMPLE)
def test_other_tags_still_go_through_jinja(source: str) -> None:
    try:
        leaf = t.compile_leaf(source)
    except t.TemplateProblem:
        return  # not a template at all: nothing to take a fast path
    assert leaf.path is None


def test_a_variable_the_caller_did_not_pass_falls_back_to_jinja() -> None:
    leaf = t.compile_leaf("{{ event.OrderId }}")
    assert leaf.path is not None
    assert leaf.render_value({"person": {}, "flow": {}}) == ""


class _OtherMapping(Mapping[str, Any]):
    """A mapping type the fast paths do not know: it takes the general route."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _spent(fn: Any, *args: Any) -> tuple[Any, int, int]:
    token = values.new_budget()
    try:
        result = fn(*args)
        budget = values.current_budget()
        assert budget is not None
        return result, budget.steps, budget.output
    finally:
        values.end_budget(token)


@pytest.mark.parametrize("key", ["OrderId", "$value", "Items", "missing", "$event_id", 3])
@pytest.mark.parametrize("view", [EventView, ProfileView, values.MapView, dict])
def test_item_lookup_by_exact_type_matches_the_general_lookup(view: Any, key: Any) -> None:
    data = EVENT if view is EventView else (PROFILE if view is ProfileView else EVENT["properties"])
    obj = view(data)
    fast = _spent(t.ENV.getattr, obj, key)
    general = _spent(t.ENV.getattr, _OtherMapping(obj), key)
    assert repr(values.to_json_value(fast[0])) == repr(values.to_json_value(general[0]))
    assert fast[1:] == general[1:]


def test_plain_json_values_convert_as_their_views_do() -> None:
    data = {"a": [1, 2.5, "x", None, True, {"b": ["c", {"d": "é"}]}], "n": float("inf"), "big": 2**70}
    fast = _spent(values.to_json_value, data)
    general = _spent(values.to_json_value, values.MapView(data))
    assert fast == general
    assert fast[0] == {**data, "n": None}


def test_murmur2_is_kafkas() -> None:
    """Output records land on the partition aiokafka's own partitioner would pick."""
    import random

    from aiokafka.partitioner import DefaultPartitioner
    from aiokafka.partitioner import murmur2 as reference

    from processor.engine.outbound import Outbound
    from processor.partitioner import murmur2

    rng = random.Random(7)
    keys = [rng.randbytes(n) for n in range(64) for _ in range(50)] + [b"dlv_0123456789abcdef01234567"]
    assert [murmur2(k) for k in keys] == [reference(k) for k in keys]
    outbound = Outbound(on_failure=lambda _exc: None)
    outbound._partitions["t"] = list(range(8))
    assert [outbound.partition_for("t", k) for k in keys] == [
        DefaultPartitioner()(k, list(range(8)), list(range(8))) for k in keys
    ]
