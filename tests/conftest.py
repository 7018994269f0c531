"""Shared test harness: one real broker per session, fresh topic names per test.

The broker is the embedded one unless FLOWHOOK_TEST_BROKER says otherwise:
`embedded` (default), `kafka` (one Apache Kafka node) or `kafka3` (three nodes,
replication 3, min ISR 2). Every broker fixture has `.bootstrap`, `.kind` ("embedded" or
"kafka") and `.replication`. Tests marked `kafka` need Apache Kafka (skipped on the
embedded broker), `kafka3` a three-node cluster; `integration` marks the tests the Kafka
legs run (workers, restarts, crashes, replay, end to end).
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.devtools.broker import EmbeddedBroker
from processor.settings import Settings

# Every test may send to loopback receivers, and only there.
os.environ.setdefault("FLOWHOOK_ALLOW_NETWORKS", "127.0.0.0/8")

BROKER_KINDS = ("embedded", "kafka", "kafka3")


def test_broker_choice() -> str:
    """The broker this session runs on (FLOWHOOK_TEST_BROKER)."""
    choice = os.environ.get("FLOWHOOK_TEST_BROKER", "embedded").strip().lower() or "embedded"
    if choice not in BROKER_KINDS:
        raise pytest.UsageError(f"FLOWHOOK_TEST_BROKER={choice!r}: use one of {', '.join(BROKER_KINDS)}")
    return choice


test_broker_choice.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests that need a broker this session does not run."""
    choice = test_broker_choice()
    for item in items:
        if item.get_closest_marker("kafka") and choice == "embedded":
            item.add_marker(pytest.mark.skip(reason="needs Apache Kafka (FLOWHOOK_TEST_BROKER=kafka)"))
        elif item.get_closest_marker("kafka3") and choice != "kafka3":
            item.add_marker(pytest.mark.skip(reason="needs 3 Kafka nodes (FLOWHOOK_TEST_BROKER=kafka3)"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's broker on free loopback ports: embedded, or Apache Kafka (1 or 3 nodes)."""
    choice = test_broker_choice()
    if choice == "embedded":
        log_file = tmp_path_factory.mktemp("broker") / "broker.log"
        with EmbeddedBroker(log_file=log_file) as running:
            yield running
        return
    from processor.devtools.kafka_runner import KafkaCluster

    cluster = KafkaCluster(nodes=3 if choice == "kafka3" else 1, data_dir=tmp_path_factory.mktemp("kafka"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(graceful=False)


@pytest.fixture
def settings(broker: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings with a topic prefix of its own, so tests never see each other's records.

    Under `@pytest.mark.quick_groups` the consumer-group timeouts are halved: the embedded
    broker's joins take about half the session timeout, so tests that restart workers wait less.
    """
    if request.node.get_closest_marker("quick_groups") is not None:
        quick = {"session_timeout_ms": 3_000, "heartbeat_interval_ms": 300, "rebalance_timeout_ms": 3_000}
    else:
        quick = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 6_000}
    return Settings(
        brokers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=4,
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allow_http=True,
        data_dir=tmp_path / "data",
        store="memory",
        **quick,
        replication=broker.replication,
        idempotence=broker.kind == "kafka",
    )
