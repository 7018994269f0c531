"""The Apache Kafka broker settings Flowhook relies on, in one place.

The local runner (`flowhook broker --kafka`), the test brokers and `deploy/compose.yaml`
all take their broker settings from `BrokerSettings`; tests/test_deploy.py checks that
compose says the same. Why each one matters:

- replication and min ISR: a 3-node cluster keeps every topic, Flowhook's, the consumer
  offsets and the transaction log, on 3 brokers and acknowledges a write (acks=all) once 2
  have it, so losing one broker loses nothing and stops nothing;
- `group.min.session.timeout.ms`: Kafka refuses a consumer whose session timeout is under
  this floor (6 s by default); tests and dev run shorter group timeouts than production;
- `message.max.bytes`: the largest record batch a broker takes; Flowhook's producers never
  build a request larger than `constants.MAX_MESSAGE_BYTES`, and every topic Flowhook creates
  carries that limit as `max.message.bytes`, so the two cannot disagree;
- `auto.create.topics.enable=false`: a typo in a topic name is an error, not a new topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from processor import constants as c


@dataclass(frozen=True)
class BrokerSettings:
    replication: int = 1
    min_insync_replicas: int = 1
    group_min_session_timeout_ms: int = 1_000
    message_max_bytes: int = c.MAX_MESSAGE_BYTES
    auto_create_topics: bool = False

    @classmethod
    def for_nodes(cls, nodes: int) -> BrokerSettings:
        """Replication 3 and min ISR 2 from three nodes on; a single node keeps 1 and 1."""
        replication = min(nodes, 3)
        return cls(replication=replication, min_insync_replicas=2 if replication >= 3 else 1)

    def server_properties(self) -> dict[str, str]:
        """The broker's server.properties entries for these settings."""
        r, isr = str(self.replication), str(self.min_insync_replicas)
        return {
            "default.replication.factor": r,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": r,
            "transaction.state.log.replication.factor": r,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": r,
            "share.coordinator.state.topic.min.isr": isr,
            "group.min.session.timeout.ms": str(self.group_min_session_timeout_ms),
            "message.max.bytes": str(self.message_max_bytes),
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            # A group's first join completes at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
        }

    def compose_environment(self) -> dict[str, str]:
        """The same settings as the apache/kafka image's KAFKA_* environment variables."""
        return {_env_name(key): value for key, value in self.server_properties().items()}


def _env_name(key: str) -> str:
    return "KAFKA_" + key.upper().replace(".", "_")
