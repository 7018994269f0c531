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
