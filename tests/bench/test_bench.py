"""`flowhook bench` keeps working: a small run of every stage (figures are reported, never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from processor.bench.stages import NO_CPU_NOTE
from tests.conftest import test_broker_choice

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EVERY_STAGE = "raw,agent,processor,dispatcher,e2e,half,state"
# The soak (at a tiny size, counts only) on the embedded leg: it adds about 40 s per leg.
SOAK = "soak"


@pytest.mark.timeout(600)
def test_bench_smoke_runs_every_stage() -> None:
    """Every stage of a 300-event bench completes all its records and reports a rate and the
    CPU per record of its processes (on the Kafka legs: `bench --kafka`, with the Kafka node
    as the broker process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOK_")}
    on_kafka = test_broker_choice() != "embedded"
    # On Kafka without the state and soak stages (the Kafka legs' time budget): RocksDB
    # restarts on Kafka are covered by tests/engine/test_engine_workers.py.
    stages = "raw,agent,processor,dispatcher,e2e,half" if on_kafka else f"{EVERY_STAGE},{SOAK}"
    stages += ",fetchcost"
    done = subprocess.run(
        [sys.executable, "-m", "processor", "bench", "--events", "300", "--profiles", "40",
         "--concurrency", "16", "--partitions", "2", "--stages", stages, "--state-profiles", "400",
         "--soak-events", "200", "--soak-seconds", "2", "--fetchcost-batches", "100,200", "--json",
         *(["--kafka"] if on_kafka else [])],
        capture_output=True, timeout=590, env=env,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:] + done.stdout.decode()[-3000:]
    report = orjson.loads(done.stdout)
    stages = {s["stage"]: s for s in report["stages"]}
    assert len(stages) == (8 if on_kafka else 14)
    # The broker's CPU per fetch at each reading (figures, not asserted: a property of the broker).
    for batches in ("100", "200"):
        reading = stages.pop(f"fetchcost: {batches} stored batches")
        assert reading["count"] > 0 and "broker CPU per fetch of the last record" in reading["note"]
    if not on_kafka:
        # The soak at a tiny size: counts only (every delivery terminal, the first tries counted).
        soak = stages.pop("soak: first tries, 10% 503, 1% hang, one down")
        unloaded = next(stages.pop(name) for name in list(stages) if name.startswith("soak: unloaded"))
        assert soak["count"] == 200 and unloaded["count"] >= 1
        assert " 0 not terminal" in soak["note"] and set(soak["peak_rss_mb"]) == {"processor", "dispatcher"}
        assert "by minute: first-try p99 " in soak["note"] and "CPU cores broker " in soak["note"]
        fill = stages.pop("fill: 400 profiles, each waiting on a delay")
        ready = stages.pop("restart to ready with 400 profiles")
        assert fill["count"] == 400 and fill["peak_rss_mb"]["processor"] > 0
        assert ready["count"] == 1 and ready["seconds"] > 0
    for stage in stages.values():
        assert stage["count"] == 300, stage
        assert stage["per_second"] and stage["per_second"] > 0
    e2e = stages["end to end"]
    assert e2e["p50_ms"] is not None and e2e["p99_ms"] >= e2e["p50_ms"]
    assert set(e2e["peak_rss_mb"]) == {"processor", "dispatcher"}
    assert e2e["broker_cpu_s"] is not None and e2e["broker_cpu_s"] > 0
    # CPU per record: each stage names the processes it ran, counted over its own records.
    roles = {name: set(stage["cpu_us_per_record"]) for name, stage in stages.items()}
    assert roles["raw HTTP (aiohttp client)"] == {"client", "receiver"}
    # A worker stage this small may write every output before the window opens; then it says so.
    for name, expected in (("plain Faust agent (baseline)", {"agent", "broker", "driver"}),
                           ("processor", {"processor", "broker", "driver"}),
                           ("dispatcher", {"dispatcher", "broker", "receiver", "driver"})):
        assert roles[name] == expected or (not roles[name] and NO_CPU_NOTE in stages[name]["note"])
    for name in ("end to end", "end to end at half that rate"):
        assert roles[name] == {"processor", "dispatcher", "broker", "receiver", "driver"}
        assert stages[name]["cpu_records"] == 300 and stages[name]["cpu_us_total"] > 0
    assert stages["end to end at half that rate"]["p99_ms"] is not None
