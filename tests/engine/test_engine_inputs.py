"""Input checks and the due index: the small pure parts around the engine core."""

from __future__ import annotations

import orjson
import pytest

from processor import constants as c
from processor.engine.due import DueIndex
from processor.engine.inputs import Refused, decode
from tests.engine_helpers import event


def test_valid_event_decodes_with_its_profile_key() -> None:
    """A valid event decodes to the record and its profile id."""
    record, pid = decode("event", orjson.dumps(event("e1", pid="p_9")))
    assert pid == "p_9" and record["id"] == "e1"


def test_event_without_profile_id_is_keyed_by_email() -> None:
    """An event whose profile has only an email is keyed by the lower-cased email."""
    raw = {**event("e1"), "profile": {"email": "Shah@Example.com"}}
    assert decode("event", orjson.dumps(raw))[1] == "shah@example.com"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({"id": "e1", "metric": "X"}), "event schema"),
        (orjson.dumps({**event("e1"), "time": "2026-13-45T99:00:00Z"}), "not ISO-8601"),
        (b"x" * (c.MAX_INPUT_RECORD_BYTES + 1), "oversized"),
        (None, "empty"),
    ],
)
def test_unusable_events_are_refused_with_a_reason(value: bytes | None, reason: str) -> None:
    """Records that are not JSON, break the schema or are too big are refused, naming why."""
    with pytest.raises(Refused, match=reason):
        decode("event", value)


def test_profile_updates_and_wakeups_are_checked() -> None:
    """Profile updates need an id or email; wake-ups need a profile id."""
    assert decode("profile", b'{"email": "A@B.CO"}')[1] == "a@b.co"
    with pytest.raises(Refused, match="profile schema"):
        decode("profile", b'{"first_name": "x"}')
    assert decode("wakeup", b'{"profile_id": "p1", "due_at": "x"}')[1] == "p1"
    with pytest.raises(Refused, match="profile_id"):
        decode("wakeup", b"{}")


def test_due_index_pops_in_time_order_and_respects_the_limit() -> None:
    """Due profiles come out earliest first, at most `limit` at a time; later ones stay."""
    index = DueIndex()
    index.set("a", 30, 0)
    index.set("b", 10, 1)
    index.set("c", 20, 2, "date_property")
    index.set("d", 99, 3)
    assert index.pop_due(50, limit=2) == [("b", 1, 10, "delay"), ("c", 2, 20, "date_property")]
    assert index.pop_due(50, limit=10) == [("a", 0, 30, "delay")]
    assert len(index) == 1


def test_due_index_replaces_and_clears_entries() -> None:
    """A new due time replaces the old one; None clears it; revoked partitions are dropped."""
    index = DueIndex()
    index.set("a", 10, 0)
    index.set("a", 40, 0)
    assert index.pop_due(20, limit=10) == []
    index.set("b", 5, 1)
    index.set("b", None, 1)
    index.set("c", 5, 2)
    index.drop_partitions({2})
    assert index.pop_due(100, limit=10) == [("a", 0, 40, "delay")]


def test_a_rebuild_keeps_what_the_agent_set_since_it_began() -> None:
    """During a rebuild, what the agent sets (or the timer pops) wins over what the rebuild
    read of the same profile; after it, the rebuild's own entries are in place."""
    index = DueIndex()
    index.set("old", 1, 0)
    index.begin_rebuild()
    assert index.rebuilding and len(index) == 0  # starts empty
    index.set("agent", 50, 1)  # the agent handled a record of this profile meanwhile
    index.set("cleared", None, 1)
    index.set("popped", 5, 2)
    assert index.pop_due(10, limit=10) == [("popped", 2, 5, "delay")]
    assert not index.set_rebuilt("agent", 20, 1, "delay")  # read before the agent's write
    assert not index.set_rebuilt("cleared", 20, 1, "delay")
    assert not index.set_rebuilt("popped", 5, 2, "delay")  # its wake-up is on its way
    assert index.set_rebuilt("other", 30, 3, "date_property")
    index.end_rebuild()
    assert not index.rebuilding
    assert index.pop_due(100, limit=10) == [("other", 3, 30, "date_property"), ("agent", 1, 50, "delay")]


async def test_the_background_rebuild_lets_the_agent_run_and_keeps_its_word() -> None:
    """The rebuild reads the store in chunks, yielding to the event loop between them: a
    profile the agent changes meanwhile keeps the agent's due time, the rest come from the
    store, and the index says when it is complete."""
    import asyncio
    from types import SimpleNamespace

    from processor.engine.flowset import FlowSet
    from processor.engine.state import ProfileState, Run, dumps
    from processor.engine.wakeups import REBUILD_CHUNK, WakeUps

    def stored(i: int) -> bytes:
        run = Run(f"r{i}", "f", 1, 0, {"id": f"e{i}"}, 0, wake_ms=1_000 + i)
        return dumps(ProfileState(f"p{i}", partition=i % 4, runs={run.run_id: run}))

    count = REBUILD_CHUNK + 1
    table = SimpleNamespace(data=SimpleNamespace(data={f"p{i}".encode(): stored(i) for i in range(count)}))
    wakeups = WakeUps(app=None, topic="w", flows=FlowSet(), clock=lambda: 0)  # type: ignore[arg-type]
    wakeups.rebuild(table)  # type: ignore[arg-type]
    assert wakeups.rebuilding
    await asyncio.sleep(0)  # the first chunk has run; the last profile is not read yet
    last = f"p{count - 1}"
    wakeups.due.set(last, None, (count - 1) % 4)  # the agent: its run moved on
    await wakeups.rebuilt()
    assert not wakeups.rebuilding
    assert len(wakeups.due) == count - 1
    due = wakeups.due.pop_due(10**9, limit=count)
    assert last not in {d[0] for d in due}
    assert due[0] == ("p0", 0, 1_000, "delay")
