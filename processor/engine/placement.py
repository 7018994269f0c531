"""Records on the "wrong" partition: forward them to their profile's home partition.

A profile's state lives on one partition of the table: the one Kafka's default (murmur2)
partitioner picks for the profile id, which is where `flowhook send`, aiokafka and the Java
client put a record keyed by it. librdkafka clients (kcat, confluent-kafka, node-rdkafka)
pick by CRC32 unless told `partitioner=murmur2_random`, so their records keyed by the same
profile id mostly land elsewhere; handled there, they would build a second state for the
profile. As Kafka Streams does, such a record is not handled where it arrived: it is
produced unchanged to a co-partitioned repartition topic, on the home partition, and
handled when it comes back from there. Pure (no Kafka).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processor.partitioner import murmur2


@dataclass
class MisplacedRecords:
    """How many input records arrived off their profile's home partition and were forwarded,
    per source topic (a plain counter: an ops exporter can publish it as a metric)."""

    by_topic: dict[str, int] = field(default_factory=dict)

    def add(self, topic: str) -> None:
        self.by_topic[topic] = self.by_topic.get(topic, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_topic.values())


def home_partition(profile_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for this profile id as key."""
    return (murmur2(profile_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Forward:
    """A misplaced record, to produce unchanged to `topic` on the profile's home partition."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int


@dataclass
class Placement:
    """Which input topics forward misplaced records, and where to (source -> repartition topic)."""

    partitions: int
    repartition: dict[str, str]
    counter: MisplacedRecords = field(default_factory=MisplacedRecords)

    def forward(self, topic: str, partition: int, value: Any, profile_id: str) -> Forward | None:
        """A Forward when a record of `topic` sits off its profile's home partition, else None.
        Records of a repartition topic (or wake-ups) are placed by construction: never None."""
        target = self.repartition.get(topic)
        if target is None:
            return None
        home = home_partition(profile_id, self.partitions)
        if partition == home:
            return None
        self.counter.add(topic)
        return Forward(target, profile_id.encode(), value, home)
