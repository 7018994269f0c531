"""What the console's pages read from the index: flows with counts, activity logs, one delivery.

Lists are keyset-paginated on `(last_ms, delivery_id)` descending: a page asks for rows
strictly after the last row of the previous page, so every page costs the same however
deep it is, with the indexes in `index.SCHEMA` serving each filter combination.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from processor.console.index import FAILED_OUTCOMES

PAGE_SIZE = 50
OUTCOMES = ("delivered", "retry_scheduled", "failed", "dead", "blocked", "held", "invalid", "cancelled")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class LogFilter:
    """The activity log's filters; empty fields filter nothing."""

    flow_id: str | None = None
    outcomes: tuple[str, ...] = ()
    step_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    search: str | None = None  # a delivery id, a profile id or an email
    after: tuple[int, str] | None = None  # keyset cursor: (last_ms, delivery_id) of the last row shown


@dataclass
class Page:
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: tuple[int, str] | None = None


def flows(conn: sqlite3.Connection, now_ms: int) -> list[dict[str, Any]]:
    """Every flow with its record and last-24-hour counts by outcome."""
    counts: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT flow_id, outcome, COUNT(*) AS n FROM deliveries WHERE last_ms >= ? GROUP BY flow_id, outcome",
        (now_ms - DAY_MS,),
    ):
        counts.setdefault(row["flow_id"], {})[row["outcome"]] = row["n"]
    found = []
    for row in conn.execute("SELECT flow_id, record FROM flows ORDER BY flow_id"):
        by_outcome = counts.get(row["flow_id"], {})
        found.append({"record": orjson.loads(row["record"]), "counts": by_outcome,
                      "success_rate": success_rate(by_outcome)})
    return found


def success_rate(counts: dict[str, int]) -> float | None:
    """Delivered over deliveries that ended (held and still-retrying ones do not count)."""
    ended = sum(n for outcome, n in counts.items() if outcome in ("delivered", *FAILED_OUTCOMES))
    return None if ended == 0 else counts.get("delivered", 0) / ended


def flow_record(conn: sqlite3.Connection, flow_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT record FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
    return None if row is None else orjson.loads(row["record"])


def steps_of(conn: sqlite3.Connection, flow_id: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT step_id FROM deliveries WHERE flow_id = ? ORDER BY step_id", (flow_id,))]


def activity(conn: sqlite3.Connection, f: LogFilter, limit: int = PAGE_SIZE) -> Page:
    """One page of deliveries, newest activity first, with their attempts."""
    where, params = _where(conn, f)
    sql = (f"SELECT * FROM deliveries {'WHERE ' + ' AND '.join(where) if where else ''} "
           "ORDER BY last_ms DESC, delivery_id DESC LIMIT ?")
    rows = [dict(r) for r in conn.execute(sql, (*params, limit + 1))]
    page = Page(rows=rows[:limit])
    if len(rows) > limit:
        last = page.rows[-1]
        page.next_cursor = (last["last_ms"], last["delivery_id"])
    _attach_attempts(conn, page.rows)
    return page


def _where(conn: sqlite3.Connection, f: LogFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("flow_id", f.flow_id), ("step_id", f.step_id)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if f.outcomes:
        where.append(f"outcome IN ({','.join('?' * len(f.outcomes))})")
        params += list(f.outcomes)
    if f.since_ms is not None:
        where.append("last_ms >= ?")
        params.append(f.since_ms)
    if f.until_ms is not None:
        where.append("last_ms < ?")
        params.append(f.until_ms)
    if f.search:
        ids = _search_ids(conn, f.search.strip())
        where.append(f"(delivery_id = ? OR profile_id IN ({','.join('?' * len(ids))}))")
        params += [f.search.strip(), *ids]
    if f.after is not None:
        where.append("(last_ms, delivery_id) < (?, ?)")
        params += list(f.after)
    return where, params


def _search_ids(conn: sqlite3.Connection, text: str) -> list[str]:
    """Profile ids a search term names: itself, its lower-cased email form, profiles with that email."""
    ids = {text, text.lower()}
    ids.update(r[0] for r in conn.execute("SELECT profile_id FROM emails WHERE email = ?", (text.lower(),)))
    return sorted(ids)


def _attach_attempts(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    by_id = {r["delivery_id"]: r for r in rows}
    for r in rows:
        r["attempt_rows"] = []
    marks = ",".join("?" * len(by_id))
    for a in conn.execute(f"SELECT * FROM attempts WHERE delivery_id IN ({marks}) "
                          "ORDER BY delivery_id, finished_ms, partition, offset", list(by_id)):
        by_id[a["delivery_id"]]["attempt_rows"].append(dict(a))


def delivery(conn: sqlite3.Connection, delivery_id: str) -> dict[str, Any] | None:
    """One delivery with every attempt, the request as built (secrets still references) and its run."""
    row = conn.execute("SELECT * FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
    if row is None:
        return None
    found = dict(row)
    _attach_attempts(conn, [found])
    found["due"] = due_record(conn, delivery_id)
    found["run"] = [dict(r) for r in conn.execute(
        "SELECT * FROM runs WHERE run_id = ? ORDER BY at_ms, rowid", (found["run_id"],))]
    return found


def due_record(conn: sqlite3.Connection, delivery_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT due FROM requests WHERE delivery_id = ?", (delivery_id,)).fetchone()
    return None if row is None else orjson.loads(row["due"])


def replayable(conn: sqlite3.Connection, flow_id: str, outcomes: tuple[str, ...],
               since_ms: int | None, until_ms: int | None, limit: int = 10_000) -> list[dict[str, Any]]:
    """The webhook-due records of a flow's deliveries whose latest outcome is one of `outcomes`."""
    where, params = _where(conn, LogFilter(flow_id=flow_id, outcomes=outcomes, since_ms=since_ms,
                                           until_ms=until_ms))
    sql = (f"SELECT r.due FROM deliveries d JOIN requests r USING (delivery_id) WHERE {' AND '.join(where)} "
           "ORDER BY d.last_ms LIMIT ?")
    return [orjson.loads(r[0]) for r in conn.execute(sql, (*params, limit))]


def replay_progress(conn: sqlite3.Connection, replay_id: str) -> dict[str, Any] | None:
    """A replay's deliveries and how many have a result since it was made."""
    row = conn.execute("SELECT * FROM replays WHERE replay_id = ?", (replay_id,)).fetchone()
    if row is None:
        return None
    ids: list[str] = orjson.loads(row["delivery_ids"])
    done: dict[str, str] = {}
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        for r in conn.execute(
            f"SELECT delivery_id, outcome FROM attempts WHERE delivery_id IN ({','.join('?' * len(part))}) "
            "AND finished_ms >= ? ORDER BY finished_ms", (*part, row["at_ms"])):
            done[r["delivery_id"]] = r["outcome"]
    return {"replay_id": replay_id, "at_ms": row["at_ms"], "user": row["user"], "delivery_ids": ids,
            "outcomes": done}


def audit_trail(conn: sqlite3.Connection, flow_id: str | None, limit: int = 200) -> list[dict[str, Any]]:
    if flow_id is None:
        rows = conn.execute("SELECT record FROM audit ORDER BY at_ms DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute("SELECT record FROM audit WHERE flow_id = ? ORDER BY at_ms DESC LIMIT ?",
                            (flow_id, limit))
    return [orjson.loads(r[0]) for r in rows]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per table (the status line and the bench)."""
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("deliveries", "attempts", "flows", "audit")}
