"""Any Kafka client can feed Flowhook: kcat (librdkafka, CRC32 partitioner) in, kcat out."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.devtools.receiver import Receiver
from processor.engine.placement import home_partition
from processor.settings import Settings
from tests.stack_helpers import worker_stack
from tests.test_end_to_end import collect

pytestmark = [pytest.mark.kafka, pytest.mark.integration]
PROFILES = 20


def _kcat(*args: str, stdin: bytes | None = None) -> bytes:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed (Debian package kcat, listed in .ci/packages.d/kafka.txt)"
    done = subprocess.run([kcat, *args], input=stdin, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _flow(port: int) -> dict[str, Any]:
    return {"id": "kcat-orders", "name": "kcat → delay → receiver", "status": "live",
            "trigger": {"metric": "Placed Order"},
            "steps": [{"delay": "1s"},
                      {"webhook": {"id": "hook", "url": f"http://127.0.0.1:{port}/kcat",
                                   "body": {"name": "{{ person.first_name|default:'none' }}",
                                            "order": "{{ event.OrderId }}"}}}]}


async def test_kcat_produces_events_and_reads_results(settings: Settings, tmp_path: Path) -> None:
    """Events from kcat (CRC32 partitions) and profile updates from `flowhook send` (murmur2) meet:
    every delivery, after its delay, carries the update; kcat reads the outcomes back."""
    receiver = Receiver(keep=10 * PROFILES)
    pids = [f"kcat-{n}" for n in range(PROFILES)]
    async with worker_stack(settings, tmp_path, lambda port: [_flow(port)], receiver):
        updates = tmp_path / "profiles.jsonl"
        updates.write_bytes(b"".join(orjson.dumps({"id": p, "first_name": f"Kcat {p}"}) + b"\n"
                                     for p in pids))
        sent = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "processor", "send", str(updates), "--topic",
                             settings.topics.profiles], env={**os.environ, **settings.as_env()},
            capture_output=True, timeout=60, check=False)
        assert sent.returncode == 0, sent.stderr.decode()
        lines = b"".join(
            p.encode() + b"|" + orjson.dumps({"id": f"evt-{p}", "metric": "Placed Order",
                                              "time": "2026-11-27T10:00:00Z", "profile": {"id": p},
                                              "properties": {"OrderId": p}}) + b"\n"
            for p in pids)
        await asyncio.to_thread(_kcat, "-P", "-b", settings.brokers, "-t", settings.topics.events,
                                "-K", "|", stdin=lines)
        delivered = await collect(settings, settings.topics.results, PROFILES, 90,
                                  lambda r: r.get("outcome") == "delivered")
    bodies = {orjson.loads(r.body)["order"]: orjson.loads(r.body)["name"] for r in receiver.recent}
    assert bodies == {p: f"Kcat {p}" for p in pids}
    assert {r["event_id"] for r in delivered} == {f"evt-{p}" for p in pids}
    off_home = await asyncio.to_thread(_kcat, "-C", "-b", settings.brokers, "-t", settings.topics.events,
                                       "-e", "-q", "-f", "%k %p\n")
    placed = [line.split() for line in off_home.decode().splitlines()]
    assert any(int(part) != home_partition(key, settings.partitions) for key, part in placed), \
        "kcat put every record on its murmur2 partition: the test shows nothing"
    read_back = await asyncio.to_thread(_kcat, "-C", "-b", settings.brokers, "-t", settings.topics.results,
                                        "-e", "-q", "-f", "%s\n")
    outcomes = [orjson.loads(line) for line in read_back.splitlines() if line.strip()]
    assert {o["event_id"] for o in outcomes if o.get("outcome") == "delivered"} == {f"evt-{p}" for p in pids}
