"""Shared test harness: one real embedded broker per session, fresh topic names per test."""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.broker import EmbeddedBroker
from processor.settings import Settings

# Every test may send to loopback receivers, and only there.
os.environ.setdefault("FLOWHOOK_ALLOW_NETWORKS", "127.0.0.0/8")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Kafka-compatible broker on a free loopback port, for the whole session."""
    log_file = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_file=log_file) as running:
        yield running


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings with a topic prefix of its own, so tests never see each other's records."""
    return Settings(
        brokers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=4,
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        allow_http=True,
        data_dir=tmp_path / "data",
        store="memory",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=6_000,
    )
