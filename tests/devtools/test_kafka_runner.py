"""`flowhook broker --kafka`: Apache Kafka from the fetched jars, its broker settings, its errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from processor.devtools.broker import _port_open
from processor.devtools.kafka_runner import free_port_block, new_cluster_id
from processor.devtools.stack import wait_until
from processor.kafka_settings import BrokerSettings


def _flowhook(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "processor", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def test_missing_jars_is_one_line_naming_the_make_target(tmp_path: Path) -> None:
    """Without the jars, `broker --kafka` says in one line what to run and exits 2."""
    process = _flowhook("broker", "--kafka", env={"FLOWHOOK_KAFKA_LIB": str(tmp_path)})
    _, err = process.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and "make kafka" in lines[0], lines


def test_missing_java_is_one_line_naming_the_package(tmp_path: Path) -> None:
    """Without java on PATH (and no JAVA_HOME), `broker --kafka` names the JDK to install, exit 2."""
    env = {"PATH": str(tmp_path), "JAVA_HOME": ""}
    process = _flowhook("broker", "--kafka", env=env)
    _, err = process.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and "java not found" in lines[0] and "openjdk" in lines[0], lines


def test_three_nodes_replicate_three_ways_with_two_in_sync() -> None:
    """A 3-node cluster's settings: replication 3, min ISR 2 for every topic, internal ones too."""
    props = BrokerSettings.for_nodes(3).server_properties()
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert props["auto.create.topics.enable"] == "false"
    single = BrokerSettings.for_nodes(1).server_properties()
    assert single["default.replication.factor"] == single["min.insync.replicas"] == "1"


def test_cluster_ids_are_kafka_uuids() -> None:
    """A cluster id is 22 URL-safe base64 characters, as `kafka-storage random-uuid` makes (it may
    start with "-", so the runner passes it as --cluster-id=ID)."""
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and "=" not in i and "+" not in i and "/" not in i for i in ids)


def test_port_blocks_are_consecutive_and_free() -> None:
    """The client ports of a cluster are PORT, PORT+1, PORT+2, none of them taken."""
    first = free_port_block(3)
    assert not any(_port_open(first + i) for i in range(3))


@pytest.mark.kafka
def test_broker_kafka_prints_bootstrap_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`broker --kafka --port P --data DIR` prints its bootstrap, serves, and on SIGTERM stops, exit 0."""
    port = free_port_block(1)
    process = _flowhook("broker", "--kafka", "--port", str(port), "--data", str(tmp_path / "k"),
                        start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line == f"127.0.0.1:{port}"
        assert _port_open(port)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0
    assert wait_until(lambda: not _port_open(port), 10)
    assert (tmp_path / "k" / "node-1" / "data" / "meta.properties").exists()
