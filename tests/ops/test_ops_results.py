"""`flowhook results` options, the summary's figures, and `flowhook lag`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor import records
from processor.clock import iso, now_ms
from processor.kafka import ensure_topics, make_producer
from processor.ops.summary import summarize
from processor.settings import Settings
from tests.dispatch_helpers import due_like, result_dict

LONG_ERROR = ("HTTP 422: the receiver refused the request: field 'address.postcode' is required for "
              "country GB; send it as person.properties.postcode")


def delivery(outcome: str, delivery_id: str = "d1", *, flow: str = "f", step: str = "s", attempt: int = 1,
             run: str = "r1", error: str | None = None, status: int | None = None,
             due_ms: int = 0, finished_ms: int = 1000, latency: float | None = 10.0) -> dict[str, Any]:
    due = due_like(delivery_id=delivery_id, flow_id=flow, step_id=step, run_id=run, due_at=iso(due_ms))
    return result_dict(due, outcome=outcome, attempt=attempt, latency_ms=latency, error=error,
                       http_status=status, finished_at_ms=finished_ms,
                       response_excerpt='{"error": "postcode"}' if status else None)


def run(run_id: str, status: str, flow: str = "f", reason: str | None = None) -> dict[str, Any]:
    return records.as_dict(records.run_result(run_id_=run_id, flow_id=flow, flow_version=1, profile_id="p",
                                              event_id="e", status=status, at_ms=0,  # type: ignore[arg-type]
                                              reason=reason))


def test_summary_runs_add_up_and_errors_stay_whole() -> None:
    """entered = completed + exited + active; exits at entry are apart; a completed run whose
    webhook died counts as not delivered; errors are kept in full with a sample id; a record
    repeated after a crash is counted once; both latencies are measured."""
    rows = [
        run("r1", "entered"), run("r1", "completed"),
        run("r2", "entered"), run("r2", "completed"),
        run("r3", "entered"), run("r3", "exited", reason="profile filter: vip eq true failed"),
        run("r4", "entered"),  # still waiting on a delay
        run("r5", "exited", reason="profile filter at entry: country eq 'US' failed"),
        delivery("retry_scheduled", "d1", run="r1", error="HTTP 503", status=503, finished_ms=500),
        delivery("delivered", "d1", run="r1", attempt=2, status=200, finished_ms=6000),
        delivery("delivered", "d1", run="r1", attempt=2, status=200, finished_ms=6000),  # repeated
        delivery("dead", "d2", run="r2", error=LONG_ERROR, status=422, finished_ms=2000),
        delivery("retry_scheduled", "d3", run="r4", step="t", error="timeout"),
    ]
    summary = summarize(rows)
    runs = summary.runs["f"]
    assert (runs.entered, runs.completed, runs.exited, runs.active, runs.not_entered) == (4, 2, 1, 1, 1)
    assert runs.entered == runs.completed + runs.exited + runs.active
    assert runs.completed_not_delivered == 1  # r2: its webhook died
    step = summary.steps[("f", "s")]
    assert dict(step.final) == {"delivered": 1, "dead": 1}
    assert step.attempts == 3 and step.success_rate == 0.5
    assert sorted(step.e2e_ms) == [2000.0, 6000.0]
    assert step.http_ms == [10.0, 10.0, 10.0]
    assert step.errors[LONG_ERROR] == 1 and step.samples[LONG_ERROR] == "d2"
    assert summary.steps[("f", "t")].final["pending"] == 1 and summary.pending == 1
    as_json = summary.as_dict()
    assert as_json["runs"][0]["active"] == 1
    assert as_json["steps"][0]["top_errors"][0]["error"] in (LONG_ERROR, "HTTP 503")


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=90, env=env)


async def _produce_results(settings: Settings, rows: list[tuple[dict[str, Any], int]]) -> None:
    """Result records keyed as the workers key them, with the given write times."""
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for value, at in rows:
            key = (value.get("delivery_id") or value["run_id"]).encode()
            await producer.send(settings.topics.results, orjson.dumps(value), key=key, timestamp_ms=at)
        await producer.flush()
    finally:
        await producer.stop()


def _ids(stdout: str) -> list[str]:
    return [orjson.loads(line)["delivery_id"] for line in stdout.splitlines()]


async def test_results_options_select_by_delivery_outcome_time_and_limit(settings: Settings) -> None:
    """--delivery shows every attempt and the last real answer; --outcome, --since/--until and
    --limit select; --summary --json is one object with the same figures."""
    now = now_ms()
    old, new = now - 3 * 3_600_000, now - 60_000
    rows = [  # in the order they were written, as the workers write them
        (delivery("retry_scheduled", "dlv_a", error="HTTP 503", status=503), old),
        (delivery("retry_scheduled", "dlv_a", attempt=2, error="HTTP 503", status=503), old),
        (delivery("failed", "dlv_old", error=LONG_ERROR, status=422), old),
        (delivery("dead", "dlv_a", attempt=3, error="connection refused"), new),
        *[(delivery("delivered", f"dlv_ok{n}", status=200), new) for n in range(4)],
    ]
    await _produce_results(settings, rows)
    one = await asyncio.to_thread(run_cli, settings, "results", "--delivery", "dlv_a", "--json",
                                  "--idle", "1")
    assert one.returncode == 0, one.stderr
    view = orjson.loads(one.stdout)
    assert [a["attempt"] for a in view["attempts"]] == [1, 2, 3]
    assert (view["final_outcome"], view["last_http_status"]) == ("dead", 503)
    table = await asyncio.to_thread(run_cli, settings, "results", "--delivery", "dlv_a", "--idle", "1")
    assert "final outcome: dead; last HTTP status: 503" in table.stdout

    dead = await asyncio.to_thread(run_cli, settings, "results", "--outcome", "dead", "--outcome", "failed",
                                   "--idle", "1")
    assert sorted(_ids(dead.stdout)) == ["dlv_a", "dlv_old"]
    recent = await asyncio.to_thread(run_cli, settings, "results", "--since", "1h", "--idle", "1")
    assert sorted(_ids(recent.stdout)) == ["dlv_a", *[f"dlv_ok{n}" for n in range(4)]]
    early = await asyncio.to_thread(run_cli, settings, "results", "--until", "1h", "--idle", "1")
    assert sorted(_ids(early.stdout)) == ["dlv_a", "dlv_a", "dlv_old"]
    limited = await asyncio.to_thread(run_cli, settings, "results", "--limit", "2", "--idle", "1")
    assert len(limited.stdout.splitlines()) == 2

    summary = await asyncio.to_thread(run_cli, settings, "results", "--summary", "--json", "--idle", "1")
    [step] = orjson.loads(summary.stdout)["steps"]
    assert step["outcomes"]["delivered"] == 4 and step["outcomes"]["dead"] == 1
    assert step["outcomes"]["failed"] == 1 and step["deliveries"] == 6
    text = await asyncio.to_thread(run_cli, settings, "results", "--summary", "--idle", "1")
    assert LONG_ERROR in text.stdout.replace("\n", "")  # in full, not cut at 40 characters
    assert "e2e p50/p95" in text.stdout and "http p50/p95" in text.stdout
    bad = await asyncio.to_thread(run_cli, settings, "results", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


async def test_follow_exits_0_on_ctrl_c(settings: Settings) -> None:
    """`results --follow` runs until Ctrl-C, and Ctrl-C is a clean exit (0)."""
    await _produce_results(settings, [(delivery("delivered", "dlv_f", status=200), now_ms())])
    env = {**os.environ, **settings.as_env()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor", "results", "--follow", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert orjson.loads(line)["delivery_id"] == "dlv_f"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_lag_shows_committed_lag_per_group_and_topic(settings: Settings) -> None:
    """A group that committed part of one partition of a topic is behind by all the rest of it."""
    rows = [(delivery("delivered", f"dlv_{n}", status=200), now_ms()) for n in range(10)]
    await _produce_results(settings, rows)
    group = f"{settings.topic_prefix}analytics"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(settings.topics.results) or [])
        tps = [TopicPartition(settings.topics.results, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        busiest = max(ends, key=lambda tp: ends[tp])
        await consumer.commit({busiest: max(0, ends[busiest] - 3)})
    finally:
        await consumer.stop()
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        shown = await asyncio.to_thread(run_cli, settings, "lag", "--json")
        assert shown.returncode == 0, shown.stderr
        rows = [orjson.loads(line) for line in shown.stdout.splitlines()]
    [row] = [r for r in rows if r["group"] == group]
    assert row["topic"] == settings.topics.results and row["end"] == sum(ends.values())
    assert row["lag"] == sum(ends.values()) - max(0, ends[busiest] - 3)
    table = await asyncio.to_thread(run_cli, settings, "lag")
    assert group in table.stdout
