"""`flowhook topics plan`: the topics to create where Flowhook may not create them."""

from __future__ import annotations

import click

from processor.cli.base import brokers_option, load_settings
from processor.topic_plan import planned_topics


@click.group()
def topics() -> None:
    """Topics Flowhook needs on Kafka."""


@topics.command("plan")
@brokers_option
def plan(brokers: str | None) -> None:
    """Print one kafka-topics.sh command per topic (FLOWHOOK_PARTITIONS, _REPLICATION, _TOPIC_PREFIX)."""
    settings = load_settings(brokers=brokers)
    for topic in planned_topics(settings):
        click.echo(topic.command(settings.brokers))
