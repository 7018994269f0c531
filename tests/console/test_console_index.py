"""The console's SQLite index: ingesting, keyset pages, filters, search, pruning; the feed on a broker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.clock import now_ms
from processor.console import index, queries
from processor.console.feed import Feed, IndexRunner, open_runner
from processor.records.due import due_from
from processor.settings import Settings
from tests.dispatch_helpers import due_record, produce, result_dict

ROLES = index.TopicRoles(results="r", webhooks="w", dead_letter="d", flows="f", audit="a")


class Topic:
    """Offsets per partition, as a broker would hand them out."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def message(self, topic: str, value: Any, key: bytes | None = None, partition: int = 0) -> index.Message:
        offset = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = offset + 1
        raw = None if value is None else orjson.dumps(value)
        return index.Message(topic, partition, offset, key, raw, now_ms())


def _result(due: dict[str, Any], outcome: str, attempt: int, at_ms: int, **kw: Any) -> dict[str, Any]:
    return result_dict(due_from(due), outcome=outcome, attempt=attempt, finished_at_ms=at_ms, **kw)


def test_every_attempt_is_kept_and_the_latest_outcome_wins(tmp_path: Path) -> None:
    """Two attempts of one delivery: both rows are kept; the delivery shows the later outcome and status."""
    conn, t = index.connect(tmp_path / "i.sqlite"), Topic()
    due = due_record("https://example.com/h")
    index.ingest(conn, ROLES, [
        t.message("w", due),
        t.message("r", _result(due, "retry_scheduled", 1, 1_000, http_status=503, response_excerpt="busy")),
        t.message("r", _result(due, "failed", 2, 2_000, http_status=400,
                               response_excerpt="<script>x</script>")),
    ])
    found = queries.delivery(conn, due["delivery_id"])
    assert found is not None
    assert (found["outcome"], found["http_status"], found["attempts"]) == ("failed", 400, 2)
    assert [a["outcome"] for a in found["attempt_rows"]] == ["retry_scheduled", "failed"]
    assert found["response_excerpt"] == "<script>x</script>"
    assert found["due"]["request"]["url"] == "https://example.com/h"


def test_ingesting_the_same_records_twice_counts_them_once(tmp_path: Path) -> None:
    """A batch read again after a crash (same partitions and offsets) changes nothing."""
    conn, t = index.connect(tmp_path / "i.sqlite"), Topic()
    due = due_record("https://example.com/h")
    batch = [t.message("r", _result(due, "delivered", 1, 1_000, http_status=200))]
    index.ingest(conn, ROLES, batch)
    index.ingest(conn, ROLES, batch)
    assert queries.counts(conn)["attempts"] == 1
    assert queries.delivery(conn, due["delivery_id"])["attempts"] == 1  # type: ignore[index]
    assert index.stored_offsets(conn) == {("r", 0): 1}


def _fill(conn: Any, n: int, flow: str = "test-flow") -> list[dict[str, Any]]:
    t, dues, batch = Topic(), [], []
    for i in range(n):
        due = due_record(f"https://example.com/{i}", flow_id=flow, step_id="a" if i % 2 else "b",
                         body={"email": f"User{i}@Example.com"})
        dues.append(due)
        outcome = "failed" if i % 3 == 0 else "delivered"
        batch += [t.message("w", due), t.message("r", _result(due, outcome, 1, 1_000 + i // 2))]
    index.ingest(conn, ROLES, batch)
    return dues


def test_keyset_pages_cover_every_delivery_once_newest_first(tmp_path: Path) -> None:
    """Walking the pages by cursor lists each delivery exactly once, ordered by last activity (ties by id)."""
    conn = index.connect(tmp_path / "i.sqlite")
    dues = _fill(conn, 125)
    seen: list[dict[str, Any]] = []
    f = queries.LogFilter(flow_id="test-flow")
    while True:
        page = queries.activity(conn, f, limit=20)
        seen += page.rows
        if page.next_cursor is None:
            break
        f = queries.LogFilter(flow_id="test-flow", after=page.next_cursor)
    assert sorted(r["delivery_id"] for r in seen) == sorted(d["delivery_id"] for d in dues)
    keys = [(r["last_ms"], r["delivery_id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_filters_and_search(tmp_path: Path) -> None:
    """Outcome, step and time filters narrow the log; search finds a delivery id, a profile id or an email."""
    conn = index.connect(tmp_path / "i.sqlite")
    dues = _fill(conn, 30)
    failed = queries.activity(conn, queries.LogFilter(flow_id="test-flow", outcomes=("failed",)), limit=100)
    assert len(failed.rows) == 10 and {r["outcome"] for r in failed.rows} == {"failed"}
    step_a = queries.activity(conn, queries.LogFilter(flow_id="test-flow", step_id="a"), limit=100)
    assert len(step_a.rows) == 15
    late = queries.activity(conn, queries.LogFilter(flow_id="test-flow", since_ms=1_010), limit=100)
    assert {r["last_ms"] for r in late.rows} == {1_010 + i for i in range(5)}
    target = dues[7]
    for term in (target["delivery_id"], target["profile_id"], "user7@example.com", "USER7@example.com"):
        found = queries.activity(conn, queries.LogFilter(flow_id="test-flow", search=term))
        assert [r["delivery_id"] for r in found.rows] == [target["delivery_id"]], term
    assert queries.activity(conn, queries.LogFilter(outcomes=("failed",), flow_id="other")).rows == []


def test_flows_page_counts_the_last_day_and_the_success_rate(tmp_path: Path) -> None:
    """Counts by outcome over the last 24 hours; success rate is delivered over ended deliveries."""
    conn, t = index.connect(tmp_path / "i.sqlite"), Topic()
    now = now_ms()
    flow_record = {"id": "test-flow", "version": 2, "definition": {"name": "<script>n</script>"},
                   "applied_at": "x", "source": "s"}
    batch = [t.message("f", flow_record, key=b"test-flow")]
    for i, outcome in enumerate(["delivered", "delivered", "delivered", "dead", "held"]):
        batch.append(t.message("r", _result(due_record("https://e.com/x"), outcome, 1, now - i)))
    old = _result(due_record("https://e.com/x"), "failed", 1, now - 2 * queries.DAY_MS)
    batch.append(t.message("r", old))
    index.ingest(conn, ROLES, batch)
    [row] = queries.flows(conn, now)
    assert row["counts"] == {"delivered": 3, "dead": 1, "held": 1}
    assert row["success_rate"] == 0.75
    index.ingest(conn, ROLES, [t.message("f", None, key=b"test-flow")])
    assert queries.flows(conn, now) == []


def test_prune_forgets_what_retention_has_dropped(tmp_path: Path) -> None:
    """Deliveries last seen before the cut-off go, with their attempts and requests."""
    conn = index.connect(tmp_path / "i.sqlite")
    _fill(conn, 20)
    assert index.prune(conn, 1_005) == 10
    assert queries.counts(conn)["deliveries"] == 10 and queries.counts(conn)["attempts"] == 10


def test_replayable_selects_latest_failed_or_dead_with_their_requests(tmp_path: Path) -> None:
    """Only deliveries whose latest outcome is chosen are replayable, each with its webhook-due record."""
    conn = index.connect(tmp_path / "i.sqlite")
    dues = _fill(conn, 9)
    chosen = queries.replayable(conn, "test-flow", ("failed", "dead"), None, None)
    assert sorted(d["delivery_id"] for d in chosen) == sorted(d["delivery_id"] for d in dues[::3])


@pytest.mark.integration
async def test_feed_follows_the_topics_and_resumes_after_restarts(settings: Settings, tmp_path: Path) -> None:
    """The feed indexes results and requests from a real broker, and a restart reads nothing twice."""
    path = tmp_path / "index.sqlite"
    dues = [due_record(f"https://example.com/{i}") for i in range(5)]
    await produce(settings, dues)
    results = [_result(d, "delivered", 1, now_ms(), http_status=200) for d in dues]
    await produce(settings, results, topic=settings.topics.results)
    counts = await _run_feed(settings, path, lambda c: c["deliveries"] == 5)
    assert counts["attempts"] == 5
    more = [_result(d, "failed", 2, now_ms(), http_status=400) for d in dues[:2]]
    await produce(settings, more, topic=settings.topics.results)
    counts = await _run_feed(settings, path, lambda c: c["attempts"] == 7)
    assert counts == {"deliveries": 5, "attempts": 7, "flows": 0, "audit": 0}
    conn = index.connect(path)
    assert queries.delivery(conn, dues[0]["delivery_id"])["outcome"] == "failed"  # type: ignore[index]
    path.unlink()
    counts = await _run_feed(settings, path, lambda c: c["attempts"] == 7)  # rebuilt from the topics
    assert counts["deliveries"] == 5


async def _run_feed(settings: Settings, path: Path, done: Any) -> dict[str, int]:
    runner = IndexRunner(path)
    feed = Feed(settings, runner, retention_ms=86_400_000)
    task = asyncio.create_task(feed.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.1)
            if feed.caught_up.is_set() and done(await runner.read(queries.counts)):
                break
        await asyncio.wait_for(feed.caught_up.wait(), 20)
        return await runner.read(queries.counts)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        runner.close()


def test_a_damaged_index_file_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    """A file that is not SQLite is kept as .damaged and a fresh index starts in its place."""
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not a database file, not at all" * 100)
    runner = open_runner(path)
    try:
        assert (tmp_path / "index.sqlite.damaged").exists()
        assert queries.counts(index.connect(path))["deliveries"] == 0
    finally:
        runner.close()
