"""The tools around the workers: send, results summary, the receiver and the CLI's exit codes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from processor import records
from processor.devtools.receiver import Receiver, start_receiver
from processor.devtools.sending import produce_lines, profile_key, read_lines
from processor.errors import InputError
from processor.kafka import make_producer, read_records
from processor.ops.summary import percentile, summarize
from processor.settings import Settings
from tests.dispatch_helpers import due_like, result_dict

EVENT = {"id": "evt_1", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
         "profile": {"id": "p_1"}, "properties": {"$value": 10}}


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else orjson.dumps(x).decode() for x in lines))
    return path


def test_profile_key_prefers_id_then_lowercased_email() -> None:
    """Events are keyed by profile id, else by the lower-cased email."""
    assert profile_key(EVENT) == "p_1"
    assert profile_key({**EVENT, "profile": {"email": " Shah@Example.COM"}}) == "shah@example.com"
    assert profile_key({"id": "p_2"}) == "p_2"  # a profile update is its own profile


def test_read_lines_reports_every_bad_line_with_file_and_line(tmp_path: Path) -> None:
    """A file with bad lines is refused whole, naming each bad line and field."""
    path = write_lines(tmp_path / "e.jsonl", EVENT, "{not json", {**EVENT, "profile": {}}, {"id": "x"})
    with pytest.raises(InputError) as caught:
        read_lines(path, "event")
    lines = [(p.line, p.field) for p in caught.value.problems]
    assert [line for line, _ in lines] == [2, 3, 4]
    assert all(p.file == str(path) for p in caught.value.problems)
    assert "JSON" in caught.value.problems[0].message


def test_read_lines_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is an InputError naming it."""
    with pytest.raises(InputError, match=r"missing\.jsonl"):
        read_lines(tmp_path / "missing.jsonl", "event")


def test_cli_send_bad_file_exits_2(tmp_path: Path) -> None:
    """`flowhook send` on a broken file exits 2 with file:line in the message, sending nothing."""
    path = write_lines(tmp_path / "bad.jsonl", EVENT, "oops")
    done = subprocess.run([sys.executable, "-m", "processor", "send", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={"FLOWHOOK_BROKERS": "127.0.0.1:1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert f"{path}:2" in done.stderr


def test_cli_bad_setting_exits_2() -> None:
    """A bad FLOWHOOK_* variable is a usage error naming the variable."""
    done = subprocess.run([sys.executable, "-m", "processor", "results"], capture_output=True, text=True,
                          timeout=60, env={"FLOWHOOK_PARTITIONS": "many", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "FLOWHOOK_PARTITIONS" in done.stderr


async def test_send_produces_keyed_by_profile(settings: Settings, tmp_path: Path) -> None:
    """Every line reaches the events topic keyed by its profile."""
    events = [{**EVENT, "id": f"evt_{i}", "profile": {"id": f"p_{i % 3}"}} for i in range(30)]
    lines = read_lines(write_lines(tmp_path / "e.jsonl", *events), "event")
    assert await produce_lines(settings, settings.topics.events, lines, rate=1000) == 30
    got = [(r.key, orjson.loads(r.value)["id"]) async for r in
           read_records(settings, settings.topics.events, idle_s=1.0)]
    assert sorted(k for k, _ in got) == sorted(f"p_{i % 3}".encode() for i in range(30))


def delivery(outcome: str, delivery_id: str = "d1", latency: float | None = 5.0, error: str | None = None,
             attempt: int = 1) -> dict:
    due = due_like("https://example.invalid/x?token=1", delivery_id=delivery_id)
    return result_dict(due, outcome=outcome, attempt=attempt, latency_ms=latency, error=error,
                       http_status=200 if outcome == "delivered" else 503)


def test_summary_counts_latest_outcome_per_delivery() -> None:
    """A delivery retried then delivered counts once as delivered, with both attempts."""
    summary = summarize([
        delivery("retry_scheduled", error="HTTP 503"),
        delivery("delivered", attempt=2, latency=7.0),
        delivery("failed", delivery_id="d2", error="HTTP 400"),
        records.as_dict(records.run_result(run_id_="r", flow_id="f", flow_version=1, profile_id="p",
                                           event_id="e", status="exited", at_ms=0,
                                           reason="country eq 'US' failed")),
    ])
    step = summary.steps[("f", "s")]
    assert dict(step.final) == {"delivered": 1, "failed": 1}
    assert step.attempts == 3 and step.errors["HTTP 503"] == 1
    assert summary.runs["f"].ended_unseen == 1  # exited; its entry is not among the records
    assert summary.pending == 0


def test_result_records_validate() -> None:
    """Delivery and run result builders write records that match schemas/result.schema.json."""
    assert records.validation_error("result", delivery("delivered")) is None
    run = records.as_dict(records.run_result(run_id_="r", flow_id="f", flow_version=1, profile_id="p",
                                             event_id="e", status="entered", at_ms=0))
    assert records.validation_error("result", run) is None
    assert records.validation_error("result", {**run, "status": "paused"}) is not None


def test_percentile_nearest_rank() -> None:
    """p50 and p95 by nearest rank; no values gives None."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0
    assert percentile([], 0.5) is None


async def test_receiver_fails_first_try_of_chosen_share_only() -> None:
    """With fail_share=1 the first try of each webhook-id gets 503 and the retry gets 200."""
    receiver = Receiver(fail_share=1.0)
    runner, port = await start_receiver(receiver)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(2):
                async with session.post(f"http://127.0.0.1:{port}/x", json={},
                                        headers={"webhook-id": "dlv_1"}) as response:
                    statuses.append(response.status)
        assert statuses == [503, 200] and receiver.by_path["/x"] == 2
    finally:
        await runner.cleanup()


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=90, env=env)


async def test_cli_send_then_results_filter_and_summary(settings: Settings, tmp_path: Path) -> None:
    """`send` produces a file; `results --flow` prints only that flow's records; `--summary` tabulates."""
    events = write_lines(tmp_path / "e.jsonl", *[{**EVENT, "id": f"evt_{i}"} for i in range(5)])
    sent = await asyncio.to_thread(run_cli, settings, "send", str(events), "--rate", "500")
    assert sent.returncode == 0 and "sent 5 records" in sent.stderr
    outcomes = [delivery("delivered", delivery_id=f"d{i}") for i in range(3)]
    outcomes.append({**delivery("failed", delivery_id="x"), "flow_id": "other"})
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in outcomes:
            await producer.send_and_wait(settings.topics.results, orjson.dumps(value))
    finally:
        await producer.stop()
    listed = await asyncio.to_thread(run_cli, settings, "results", "--flow", "f", "--idle", "1")
    assert listed.returncode == 0
    listed_ids = sorted(orjson.loads(line)["delivery_id"] for line in listed.stdout.splitlines())
    assert listed_ids == ["d0", "d1", "d2"]
    summary = await asyncio.to_thread(run_cli, settings, "results", "--summary", "--idle", "1")
    assert summary.returncode == 0 and "delivered" in summary.stdout and "other" in summary.stdout
