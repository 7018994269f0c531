"""Batches of input records: the same outputs, states and due times as one record at a time."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from processor.clock import iso
from processor.engine import batch as batch_module
from processor.engine.batch import BatchResult, Input, Produce, Topics, process_batch
from processor.engine.flowset import FlowSet
from processor.engine.state import loads
from tests.engine_helpers import T0, event, flow, webhook

TOPICS = Topics(
    kinds={"ev": "event", "pr": "profile", "wk": "wakeup"},
    outputs={"webhook": "hooks", "result": "results"},
    invalid="invalid",
)
FLOWS = FlowSet(
    [
        flow("now"),
        flow("later", steps=[{"delay": "2s"}, webhook("later")], reentry={"mode": "always"}),
        flow("vip", profile_filters=[{"property": "vip", "op": "eq", "value": True}]),
    ]
)


def _inputs() -> list[Input]:
    """Several records per profile, out of order across profiles, with duplicates and junk."""
    records: list[tuple[str, Any]] = [
        ("ev", event("e1", pid="p1", OrderId="1")),
        ("ev", event("e2", pid="p2", OrderId="2")),
        ("ev", event("e3", pid="p1", OrderId="3")),
        ("ev", event("e1", pid="p1", OrderId="1")),  # a replayed event: de-duplicated
        ("pr", {"id": "p2", "properties": {"vip": True}}),
        ("ev", b"not json"),
        ("ev", event("e4", pid="p2", OrderId="4")),
        ("ev", {"id": "e5", "metric": "Placed Order"}),  # no profile: refused
        ("wk", {"profile_id": "p1", "due_at": iso(T0), "reason": "delay"}),
        ("ev", event("e6", pid="p3", OrderId="6")),
        ("wk", {"profile_id": "p3", "due_at": iso(T0), "reason": "delay"}),
        ("ev", event("e7", pid="p1", OrderId="7")),
    ]
    inputs = []
    for offset, (topic, record) in enumerate(records):
        value = record if isinstance(record, bytes) else orjson.dumps(record)
        inputs.append(Input(topic, 0, offset, f"k{offset}".encode(), value, ref=offset))
    return inputs


class Table:
    """The table and the clock one worker would have."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.due: dict[str, Any] = {}
        self.ticks = itertools.count()

    def clock(self) -> int:
        return T0 + 1500 * next(self.ticks)  # 1.5 s per record: delays fall due mid-batch

    def run(self, inputs: list[Input], committed: Any = lambda _t, _p: None) -> BatchResult:
        result = process_batch(
            inputs, topics=TOPICS, flows=FLOWS, load=lambda key, _item: self.data.get(key),
            clock=self.clock, committed=committed,
        )
        for write in result.writes:
            self.data[write.key] = write.value
        for profile_id, _partition, due in result.due:
            self.due[profile_id] = due
        return result


def _one_by_one(inputs: list[Input]) -> tuple[Table, list[Any]]:
    table = Table()
    produced = []
    for item in inputs:
        produced += table.run([item]).produce
    return table, _comparable(produced)


def _comparable(produced: list[Produce]) -> list[tuple[str, bytes | None, Any, int | None]]:
    """Records to produce, without the wall-clock `seen_at` of refused-input copies."""
    out = []
    for p in produced:
        value = orjson.loads(p.value)
        if p.topic == "invalid":
            value.pop("seen_at")
        out.append((p.topic, p.key, value, p.partition))
    return out


def _states(table: Table) -> dict[bytes, Any]:
    return {k: loads(v) for k, v in table.data.items()}


def _run_and_compare_with_one_by_one(inputs: list[Any]) -> tuple[Table, Any]:
    """Run `inputs` as one batch; assert outputs, states and due times equal one-by-one handling."""
    single, produced_single = _one_by_one(inputs)
    together = Table()
    result = together.run(inputs)
    assert _comparable(result.produce) == produced_single
    assert _states(together) == _states(single)
    assert together.due == single.due
    return together, result


def test_a_batch_gives_what_one_record_at_a_time_gives() -> None:
    inputs = _inputs()
    _table, result = _run_and_compare_with_one_by_one(inputs)
    assert result.handled == len(inputs) - 2
    topics = [p.topic for p in result.produce]
    assert topics.count("invalid") == 2 and topics.count("hooks") >= 6


def test_a_profile_is_written_once_per_batch_with_its_final_state() -> None:
    result = Table().run(_inputs())
    keys = [w.key for w in result.writes]
    assert sorted(keys) == [b"p1", b"p2", b"p3"]
    p1 = next(w for w in result.writes if w.key == b"p1")
    assert p1.ref == 11  # the profile's last record: the store picks the partition by it
    assert loads(p1.value).seen == ["e1", "e3", "e7"]


def test_a_batch_read_again_after_a_crash_produces_its_outputs_again() -> None:
    """The table write reached Kafka, the outputs and the offsets did not: same outputs again."""
    table = Table()
    first = table.run(_inputs())
    table.ticks = itertools.count()  # read again at the same moments
    again = table.run(_inputs())
    valid = [p for p in first.produce if p.topic != "invalid"]
    assert [p for p in again.produce if p.topic != "invalid"] == valid
    assert again.writes == []  # nothing changed


@pytest.mark.parametrize("poisoned", ["e3", "e6"])
def test_a_record_the_core_fails_on_leaves_no_trace(monkeypatch: pytest.MonkeyPatch, poisoned: str) -> None:
    """The failing record is refused and its half-done changes dropped; the rest stands."""
    real = batch_module.handle

    def failing(state: Any, kind: str, record: dict[str, Any], *args: Any) -> Any:
        if record.get("id") == poisoned:
            state.profile["half_done"] = True
            state.seen.append(poisoned)
            raise ValueError("boom")
        return real(state, kind, record, *args)

    monkeypatch.setattr(batch_module, "handle", failing)
    together, result = _run_and_compare_with_one_by_one(_inputs())
    assert all("half_done" not in s.profile and poisoned not in s.seen for s in _states(together).values())
    refusals = [orjson.loads(p.value) for p in result.produce if p.topic == "invalid"]
    assert any(r["reason"] == "engine error: ValueError: boom" for r in refusals)
