"""SASL (PLAIN, SCRAM) and TLS for every client, against a local Kafka with a SASL_SSL listener."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from processor.devtools.kafka_runner import KafkaCluster
from processor.devtools.receiver import Receiver
from processor.kafka import ensure_topics, read_records
from processor.settings import Settings
from tests.stack_helpers import worker_stack
from tests.test_end_to_end import SECRETS, collect, event, order_flow, produce

pytestmark = [pytest.mark.kafka, pytest.mark.integration]
USER, PASSWORD = "flowhook-app", "correct horse battery staple"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Kafka node with a SASL_SSL listener (PLAIN and SCRAM users, self-signed certificate)."""
    cluster = KafkaCluster(nodes=1, data_dir=tmp_path_factory.mktemp("secure-kafka"),
                           sasl_users={USER: PASSWORD}, tls=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(graceful=False)


def _secure(settings: Settings, cluster: KafkaCluster, mechanism: str, password: str = PASSWORD) -> Settings:
    assert cluster.sasl is not None
    return settings.with_(brokers=cluster.sasl.bootstrap(), security_protocol="SASL_SSL",
                          sasl_mechanism=mechanism, sasl_username=USER, sasl_password=password,
                          ssl_cafile=cluster.sasl.ca_file, idempotence=True)


async def test_whole_path_over_scram_and_tls(settings: Settings, secure_kafka: KafkaCluster,
                                             tmp_path: Path) -> None:
    """Admin, producers, readers, the dispatcher's groups and Faust all work over SASL_SSL with SCRAM."""
    settings = _secure(settings, secure_kafka, "SCRAM-SHA-512")
    matching = [event(n, 60.0 + n) for n in range(6)]
    async with worker_stack(settings, tmp_path, lambda port: [order_flow(port)], Receiver(),
                            env=SECRETS) as workers:
        await produce(settings, settings.topics.events, [orjson.dumps(e) for e in matching],
                      [e["profile"]["id"].encode() for e in matching])
        delivered = await collect(settings, settings.topics.results, len(matching), 90,
                                  lambda r: r.get("outcome") == "delivered")
    assert {r["event_id"] for r in delivered} == {e["id"] for e in matching}
    assert PASSWORD not in "".join(w.log_path.read_text() for w in workers)


async def test_plain_and_scram_256_read_the_same_records(
    settings: Settings, secure_kafka: KafkaCluster
) -> None:
    """PLAIN and SCRAM-SHA-256 logins reach the same topics as SCRAM-SHA-512."""
    writer = _secure(settings, secure_kafka, "SCRAM-SHA-512")
    await ensure_topics(writer, [writer.topics.events])
    await produce(writer, writer.topics.events, [b'{"n": 1}'], [b"k"])
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        reader = _secure(settings, secure_kafka, mechanism)
        got = [r.value async for r in read_records(reader, reader.topics.events, idle_s=1.0)]
        assert got == [b'{"n": 1}'], mechanism


@pytest.mark.parametrize("command", [["flows", "list"], ["dispatcher", "--drain", "1"]])
def test_a_wrong_password_is_one_line_and_exit_1(settings: Settings, secure_kafka: KafkaCluster,
                                                 command: list[str]) -> None:
    """A refused SCRAM login names the brokers and the user (never the password), exit 1."""
    wrong = _secure(settings, secure_kafka, "SCRAM-SHA-256", password="not-the-password")
    env = {**os.environ, **wrong.as_env()}
    done = subprocess.run([sys.executable, "-m", "processor", *command], env=env,
                          capture_output=True, timeout=90)
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr.decode()
    assert len(lines) == 1, lines
    assert f"refused SASL user '{USER}'" in lines[0] and secure_kafka.sasl is not None
    assert secure_kafka.sasl.bootstrap() in lines[0] and "not-the-password" not in lines[0]
