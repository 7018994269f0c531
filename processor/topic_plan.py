"""What to create where admins create topics (FLOWHOOK_CREATE_TOPICS=0): `flowhook topics plan`.

Flowhook's own topics come from `kafka.topic_plan`; the processor's Faust app needs two
more, named after its app id: the table's changelog (compacted, one partition per input
partition) and the assignor's leader topic (one partition).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from processor import constants as c
from processor.kafka import topic_plan
from processor.settings import Settings

PROCESSOR_APP_SUFFIX = "processor"  # the Faust app id is TOPIC_PREFIX + this (engine.app.make_app)
TABLE_NAME = "profiles"  # engine.app.TABLE_NAME


@dataclass(frozen=True)
class PlannedTopic:
    name: str
    partitions: int
    replication: int
    configs: dict[str, str]

    def command(self, brokers: str) -> str:
        """The kafka-topics.sh line that creates this topic."""
        words = ["kafka-topics.sh", "--bootstrap-server", brokers, "--create", "--if-not-exists",
                 "--topic", self.name, "--partitions", str(self.partitions),
                 "--replication-factor", str(self.replication)]
        for key, value in sorted(self.configs.items()):
            words += ["--config", f"{key}={value}"]
        return shlex.join(words)


def processor_app_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}{PROCESSOR_APP_SUFFIX}"


def planned_topics(settings: Settings) -> list[PlannedTopic]:
    """Every topic the workers need, Faust's included, with partitions, replication, configs."""
    topics = [PlannedTopic(name, partitions, settings.replication, configs)
              for name, (partitions, configs) in sorted(topic_plan(settings).items())]
    app_id = processor_app_id(settings)
    common = {"min.insync.replicas": str(settings.min_isr), "max.message.bytes": str(c.MAX_MESSAGE_BYTES)}
    topics.append(PlannedTopic(f"{app_id}-{TABLE_NAME}-changelog", settings.partitions, settings.replication,
                               {**common, "cleanup.policy": "compact"}))
    topics.append(PlannedTopic(f"{app_id}-__assignor-__leader", 1, settings.replication, dict(common)))
    return topics
