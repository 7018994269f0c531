"""`flowhook console bench`: how long the console's pages take over an index of N deliveries.

Steps: build a scratch index in a temporary folder from result records made by the same
builder the dispatcher uses (`records.delivery_result`), spread over the last 24 hours in 5
flows with 2 steps each and a realistic mix of outcomes; then time, each several times
and reporting the median, the query and the template rendering of: the flows page, a
flow's activity log (first page, a page 100 pages deep through the keyset cursor, filtered
by outcome, searched by profile id) and the failures page. Nothing is asserted: the
figures are printed.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from processor import records
from processor.clock import iso, now_ms
from processor.console import index, queries
from processor.console.context import make_templates
from processor.console.index import FAILED_OUTCOMES

ROLES = index.TopicRoles(results="r", webhooks="w", dead_letter="d", flows="f", audit="a")
OUTCOME_MIX = (("delivered", 85), ("failed", 5), ("dead", 4), ("retry_scheduled", 4), ("invalid", 2))
REPEATS = 7


def _due(flow: str, step: str, n: int, at_ms: int) -> records.WebhookDue:
    profile, event = f"p_{n % 20_000}", f"evt_{n}"
    run = records.run_id(flow, profile, event)
    request = records.Request(method="POST", url=f"https://hooks.example.com/{flow}", headers={},
                              secret_headers={}, body=None, signing_secrets=[])
    options = records.Options(timeout_ms=10_000, retry_ms=None, max_age_ms=86_400_000, rate_limit=None)
    return records.WebhookDue(delivery_id=records.delivery_id(flow, run, step), flow_id=flow, flow_version=1,
                              step_id=step, run_id=run, profile_id=profile, event_id=event,
                              metric="Placed Order", mode="send", request=request, options=options,
                              due_at=iso(at_ms), attempt=1)


def fill(conn: Any, deliveries: int, attempts: int, now: int) -> float:
    """Write the scratch records; seconds taken."""
    rng = random.Random(7)
    outcomes = [o for o, weight in OUTCOME_MIX for _ in range(weight)]
    started = time.perf_counter()
    batch: list[index.Message] = []
    offset = 0
    for flow_id in [f"flow-{f}" for f in range(5)]:
        definition = {"id": flow_id, "name": f"Flow {flow_id}", "status": "live",
                      "trigger": {"metric": "Placed Order"}, "steps": []}
        record = {"id": flow_id, "version": 1, "definition": definition, "applied_at": iso(now),
                  "source": "bench"}
        conn.execute("INSERT OR REPLACE INTO flows VALUES (?,?,?)", (flow_id, 1, orjson.dumps(record)))
    for n in range(deliveries):
        at = now - rng.randrange(86_400_000)
        due = _due(f"flow-{n % 5}", f"step-{n % 2}", n, at)
        final = rng.choice(outcomes)
        for attempt in range(1, attempts + 1):
            outcome = final if attempt == attempts else "retry_scheduled"
            ok = outcome == "delivered"
            result = records.delivery_result(due, outcome=outcome, attempt=attempt,  # type: ignore[arg-type]
                                             http_status=200 if ok else 503, latency_ms=40.0,
                                             error=None if ok else "HTTP 503",
                                             response_excerpt="ok" if ok else "unavailable",
                                             sent_at_ms=at + attempt, finished_at_ms=at + attempt * 1000)
            offset += 1
            batch.append(index.Message("r", 0, offset, None, records.encode(result), at))
        if len(batch) >= 5_000:
            index.ingest(conn, ROLES, batch)
            batch = []
    index.ingest(conn, ROLES, batch)
    return time.perf_counter() - started


def _median_ms(func: Callable[[], Any]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(conn: Any, now: int) -> dict[str, float]:
    templates = make_templates()
    activity = templates.get_template("activity.html")
    common: dict[str, Any] = {
        "user": None, "csrf": "", "version": "bench", "path": "/", "errors": [], "steps": [],
        "outcomes": queries.OUTCOMES, "query": {}, "base": "/"}

    def page(f: queries.LogFilter) -> Callable[[], Any]:
        def run() -> str:
            found = queries.activity(conn, f)
            return activity.render(title="bench", flow_id=f.flow_id, record=None, page=found, filters=f,
                                   **common)
        return run

    deep = queries.LogFilter(flow_id="flow-1")
    for _ in range(100):
        cursor = queries.activity(conn, deep).next_cursor
        deep = queries.LogFilter(flow_id="flow-1", after=cursor)
    return {
        "flows_page_ms": _median_ms(lambda: queries.flows(conn, now)),
        "activity_first_page_ms": _median_ms(page(queries.LogFilter(flow_id="flow-1"))),
        "activity_page_101_ms": _median_ms(page(deep)),
        "activity_outcome_failed_ms": _median_ms(page(queries.LogFilter(flow_id="flow-1",
                                                                        outcomes=("failed",)))),
        "activity_search_profile_ms": _median_ms(page(queries.LogFilter(flow_id="flow-1",
                                                                        search="p_1234"))),
        "failures_page_ms": _median_ms(page(queries.LogFilter(outcomes=FAILED_OUTCOMES))),
    }


def run_bench(deliveries: int, attempts: int, *, as_json: bool = False) -> int:
    now = now_ms()
    with tempfile.TemporaryDirectory(prefix="flowhook-console-bench-") as folder:
        path = Path(folder) / "index.sqlite"
        conn = index.connect(path)
        fill_s = fill(conn, deliveries, attempts, now)
        figures: dict[str, Any] = {"deliveries": deliveries, "attempts": deliveries * attempts,
                                   "ingest_s": round(fill_s, 2),
                                   "ingest_per_s": round(deliveries * attempts / fill_s),
                                   "index_mib": round(path.stat().st_size / 2**20, 1)}
        figures.update({k: round(v, 2) for k, v in measure(conn, now).items()})
        conn.close()
    if as_json:
        sys.stdout.write(orjson.dumps(figures).decode() + "\n")
    else:
        for name, value in figures.items():
            sys.stdout.write(f"{name:28} {value}\n")
    return 0
