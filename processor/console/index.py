"""The console's local SQLite index of the results, webhooks, dead-letter, flows and audit topics.

One index file per console process (`index-<port>.sqlite` in the console's folder): each
process reads the topics itself with a group-less consumer, so there is nothing to share
and nothing to lock between processes. The index keeps the next offset of every
topic-partition in the same transaction as the rows it wrote, so a restart goes on where it
stopped, a missing file is rebuilt from the topics, and records are never counted twice.

Everything here is plain `sqlite3` and runs in the caller's thread; `feed.py` and the pages
call it off the event loop (`IndexRunner`).

Tables:
- `deliveries`: one row per delivery id with its latest outcome (the row the activity log
  and the failures page list; keyset-paginated on `(last_ms, delivery_id)`).
- `attempts`: one row per delivery result record (every attempt and every replayed try).
- `requests`: the latest webhook-due record per delivery id (the request as the engine
  built it, secrets still as `{{ secrets.NAME }}` references) — what replay sends again.
- `runs`, `flows`, `audit`, `replays`, `offsets`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from processor.clock import parse_iso_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
  delivery_id TEXT PRIMARY KEY, flow_id TEXT NOT NULL, flow_version INTEGER, step_id TEXT,
  run_id TEXT, profile_id TEXT, event_id TEXT, metric TEXT, destination TEXT,
  outcome TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER,
  error TEXT, response_excerpt TEXT, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
  last_offset INTEGER NOT NULL DEFAULT -1);
CREATE INDEX IF NOT EXISTS deliveries_flow ON deliveries (flow_id, last_ms DESC, delivery_id DESC);
CREATE INDEX IF NOT EXISTS deliveries_flow_outcome
  ON deliveries (flow_id, outcome, last_ms DESC, delivery_id DESC);
CREATE INDEX IF NOT EXISTS deliveries_flow_step
  ON deliveries (flow_id, step_id, last_ms DESC, delivery_id DESC);
CREATE INDEX IF NOT EXISTS deliveries_outcome ON deliveries (outcome, last_ms DESC, delivery_id DESC);
CREATE INDEX IF NOT EXISTS deliveries_last ON deliveries (last_ms);
CREATE INDEX IF NOT EXISTS deliveries_profile ON deliveries (profile_id);
CREATE TABLE IF NOT EXISTS attempts (
  partition INTEGER NOT NULL, offset INTEGER NOT NULL, delivery_id TEXT NOT NULL,
  attempt INTEGER, outcome TEXT, http_status INTEGER, latency_ms REAL, error TEXT,
  response_excerpt TEXT, due_at TEXT, sent_at TEXT, finished_at TEXT, finished_ms INTEGER,
  PRIMARY KEY (partition, offset));
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id, finished_ms);
CREATE TABLE IF NOT EXISTS requests (delivery_id TEXT PRIMARY KEY, due BLOB NOT NULL, seen_ms INTEGER);
CREATE TABLE IF NOT EXISTS emails (email TEXT NOT NULL, profile_id TEXT NOT NULL,
  PRIMARY KEY (email, profile_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (run_id TEXT NOT NULL, status TEXT NOT NULL, flow_id TEXT,
  profile_id TEXT, event_id TEXT, reason TEXT, at_ms INTEGER, PRIMARY KEY (run_id, status));
CREATE TABLE IF NOT EXISTS flows (flow_id TEXT PRIMARY KEY, version INTEGER, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  flow_id TEXT, at_ms INTEGER, record BLOB NOT NULL, PRIMARY KEY (partition, offset));
CREATE INDEX IF NOT EXISTS audit_flow ON audit (flow_id, at_ms DESC);
CREATE TABLE IF NOT EXISTS replays (replay_id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL,
  user TEXT, delivery_ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition));
"""

FAILED_OUTCOMES = ("failed", "dead", "invalid", "blocked")
_EMAIL = re.compile(r"^[^@\s\"<>]{1,64}@[^@\s\"<>]{1,255}\.[A-Za-z]{2,}$")


@dataclass(frozen=True)
class Message:
    """One consumed record, reduced to what the index needs (from aiokafka or a test)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


@dataclass(frozen=True)
class TopicRoles:
    """Which topic name plays which part (names carry the deployment's topic prefix)."""

    results: str
    webhooks: str
    dead_letter: str
    flows: str
    audit: str


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (or create) an index file with the schema; WAL so page reads never wait for the feed."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


# --- writing ---------------------------------------------------------------------------


def ingest(conn: sqlite3.Connection, roles: TopicRoles, messages: Sequence[Message]) -> int:
    """Write a batch of consumed records and their next offsets in one transaction; rows written."""
    written = 0
    conn.execute("BEGIN")
    try:
        for message in messages:
            written += _ingest_one(conn, roles, message)
        _store_offsets(conn, messages)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return written


def _ingest_one(conn: sqlite3.Connection, roles: TopicRoles, message: Message) -> int:
    if message.topic == roles.flows:
        return _flow(conn, message)
    value = _decode(message.value)
    if value is None:
        return 0  # unreadable records are the reliability area's business (invalid topic)
    if message.topic == roles.results:
        if value.get("type") == "delivery":
            return _delivery_result(conn, message, value)
        if value.get("type") == "run":
            return _run(conn, value)
        return 0
    if message.topic in (roles.webhooks, roles.dead_letter):
        return _request(conn, message, value)
    if message.topic == roles.audit:
        return _audit(conn, message, value)
    return 0


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _ms(text: Any, fallback: int) -> int:
    try:
        return parse_iso_ms(str(text))
    except ValueError:
        return fallback


def _delivery_result(conn: sqlite3.Connection, message: Message, r: dict[str, Any]) -> int:
    finished = _ms(r.get("finished_at"), message.timestamp)
    inserted = conn.execute(
        "INSERT OR IGNORE INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (message.partition, message.offset, r.get("delivery_id"), r.get("attempt"), r.get("outcome"),
         r.get("http_status"), r.get("latency_ms"), r.get("error"), r.get("response_excerpt"),
         r.get("due_at"), r.get("sent_at"), r.get("finished_at"), finished),
    ).rowcount
    if not inserted:
        return 0
    # A delivery id is the record key, so all its results are on one partition in order:
    # the highest offset is the latest outcome, whatever the clocks said.
    conn.execute(
        """INSERT INTO deliveries (delivery_id, flow_id, flow_version, step_id, run_id, profile_id,
             event_id, metric, destination, outcome, attempts, http_status, error, response_excerpt,
             first_ms, last_ms, last_offset)
           VALUES (?,?,?,?,?,?,?,?,?,?,1,?,?,?,?,?,?)
           ON CONFLICT (delivery_id) DO UPDATE SET attempts = attempts + 1,
             outcome = CASE WHEN excluded.last_offset > last_offset THEN excluded.outcome ELSE outcome END,
             http_status = CASE WHEN excluded.last_offset > last_offset
                                THEN excluded.http_status ELSE http_status END,
             error = CASE WHEN excluded.last_offset > last_offset THEN excluded.error ELSE error END,
             response_excerpt = CASE WHEN excluded.last_offset > last_offset
                                THEN excluded.response_excerpt ELSE response_excerpt END,
             flow_version = CASE WHEN excluded.last_offset > last_offset
                                THEN excluded.flow_version ELSE flow_version END,
             first_ms = MIN(first_ms, excluded.first_ms), last_ms = MAX(last_ms, excluded.last_ms),
             last_offset = MAX(last_offset, excluded.last_offset)""",
        (r.get("delivery_id"), r.get("flow_id"), r.get("flow_version"), r.get("step_id"), r.get("run_id"),
         r.get("profile_id"), r.get("event_id"), r.get("metric"), r.get("destination"), r.get("outcome"),
         r.get("http_status"), r.get("error"), r.get("response_excerpt"), finished, finished,
         message.offset),
    )
    return 1


def _run(conn: sqlite3.Connection, r: dict[str, Any]) -> int:
    return conn.execute(
        "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)",
        (r.get("run_id"), r.get("status"), r.get("flow_id"), r.get("profile_id"), r.get("event_id"),
         r.get("reason"), _ms(r.get("at") or r.get("time"), 0)),
    ).rowcount


def _request(conn: sqlite3.Connection, message: Message, due: dict[str, Any]) -> int:
    delivery = due.get("delivery_id")
    if not isinstance(delivery, str):
        return 0
    conn.execute("INSERT OR REPLACE INTO requests VALUES (?,?,?)",
                 (delivery, message.value, message.timestamp))
    profile = due.get("profile_id")
    for email in _emails_in(due):
        conn.execute("INSERT OR IGNORE INTO emails VALUES (?,?)", (email, profile))
    return 1


def _emails_in(due: dict[str, Any]) -> set[str]:
    """Email addresses in the rendered body: results carry no email, the request often does."""
    body = (due.get("request") or {}).get("body")
    found: set[str] = set()
    if not isinstance(body, str) or "@" not in body:
        return found
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return found
    stack = [data]
    while stack and len(found) < 8:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _EMAIL.match(item):
            found.add(item.lower())
    return found


def _flow(conn: sqlite3.Connection, message: Message) -> int:
    key = message.key.decode(errors="replace") if message.key else None
    if key is None:
        return 0
    if message.value is None:  # tombstone: the flow was removed
        return conn.execute("DELETE FROM flows WHERE flow_id = ?", (key,)).rowcount
    value = _decode(message.value)
    if value is None:
        return 0
    return conn.execute("INSERT OR REPLACE INTO flows VALUES (?,?,?)",
                        (key, value.get("version"), message.value)).rowcount


def _audit(conn: sqlite3.Connection, message: Message, value: dict[str, Any]) -> int:
    return conn.execute(
        "INSERT OR IGNORE INTO audit VALUES (?,?,?,?,?)",
        (message.partition, message.offset, value.get("flow_id"), _ms(value.get("at"), message.timestamp),
         message.value),
    ).rowcount


def _store_offsets(conn: sqlite3.Connection, messages: Iterable[Message]) -> None:
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), -1), m.offset)
    conn.executemany("INSERT OR REPLACE INTO offsets VALUES (?,?,?)",
                     [(t, p, o + 1) for (t, p), o in last.items()])


def stored_offsets(conn: sqlite3.Connection) -> dict[tuple[str, int], int]:
    """Where the feed goes on after a restart: next offset per (topic, partition)."""
    return {(r["topic"], r["partition"]): r["next_offset"] for r in conn.execute("SELECT * FROM offsets")}


def prune(conn: sqlite3.Connection, older_than_ms: int) -> int:
    """Forget deliveries whose last activity is older than the topics' retention; rows removed."""
    conn.execute("BEGIN")
    try:
        old = "SELECT delivery_id FROM deliveries WHERE last_ms < ?"
        conn.execute(f"DELETE FROM attempts WHERE delivery_id IN ({old})", (older_than_ms,))
        conn.execute(f"DELETE FROM requests WHERE delivery_id IN ({old})", (older_than_ms,))
        removed = conn.execute("DELETE FROM deliveries WHERE last_ms < ?", (older_than_ms,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


def record_replay(conn: sqlite3.Connection, replay_id: str, at_ms: int, user: str,
                  delivery_ids: Sequence[str]) -> None:
    conn.execute("INSERT INTO replays VALUES (?,?,?,?)",
                 (replay_id, at_ms, user, orjson.dumps(list(delivery_ids))))
