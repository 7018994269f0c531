"""Topics where admins create them: `flowhook topics plan`, FLOWHOOK_CREATE_TOPICS=0, per-topic configs."""

from __future__ import annotations

import asyncio
import shlex

import pytest
from click.testing import CliRunner

from processor.cli.topics import topics
from processor.kafka import TopicsMissing, ensure_topics, topic_plan
from processor.settings import Settings
from processor.topic_plan import planned_topics


def test_plan_names_every_topic_with_replication_min_isr_and_size() -> None:
    """One kafka-topics.sh line per topic, Faust's changelog and leader topics included."""
    env = {"FLOWHOOK_REPLICATION": "3", "FLOWHOOK_TOPIC_PREFIX": "shop.", "FLOWHOOK_PARTITIONS": "12",
           "FLOWHOOK_BROKERS": "127.0.0.1:1"}
    result = CliRunner().invoke(topics, ["plan"], env=env)
    assert result.exit_code == 0, result.output
    lines = [shlex.split(line) for line in result.output.splitlines()]
    names = {words[words.index("--topic") + 1] for words in lines}
    settings = Settings.from_env(env)
    assert names == set(topic_plan(settings)) | {"shop.processor-profiles-changelog",
                                                 "shop.processor-__assignor-__leader"}
    for words in lines:
        assert words[words.index("--replication-factor") + 1] == "3"
        assert "min.insync.replicas=2" in words and "max.message.bytes=4198400" in words
    changelog = next(w for w in lines if "shop.processor-profiles-changelog" in w)
    assert changelog[changelog.index("--partitions") + 1] == "12" and "cleanup.policy=compact" in changelog


def test_min_isr_follows_replication_unless_set() -> None:
    """Min ISR 1 below replication 3, 2 from 3 on; above the replication it is a config error."""
    assert Settings(replication=1).min_isr == 1 and Settings(replication=3).min_isr == 2
    assert Settings.from_env({"FLOWHOOK_REPLICATION": "3", "FLOWHOOK_MIN_INSYNC_REPLICAS": "3"}).min_isr == 3
    with pytest.raises(Exception, match="FLOWHOOK_MIN_INSYNC_REPLICAS=4 is above FLOWHOOK_REPLICATION=3"):
        Settings.from_env({"FLOWHOOK_REPLICATION": "3", "FLOWHOOK_MIN_INSYNC_REPLICAS": "4"})


def test_every_planned_topic_carries_retention_or_compaction() -> None:
    """Compacted topics keep every key; every other topic has an explicit retention."""
    for topic in planned_topics(Settings()):
        assert topic.configs.get("cleanup.policy") == "compact" or "retention.ms" in topic.configs \
            or topic.name.endswith("__assignor-__leader"), topic


async def test_without_topic_creation_a_missing_topic_is_named(settings: Settings) -> None:
    """FLOWHOOK_CREATE_TOPICS=0: nothing is created; the error names the missing topics and the plan."""
    off = settings.with_(create_topics=False)
    with pytest.raises(TopicsMissing, match=f"{off.topics.events}.*flowhook topics plan"):
        await ensure_topics(off, [off.topics.events])
    await ensure_topics(settings, [settings.topics.events])  # created by an admin (here: us)
    await ensure_topics(off, [off.topics.events])  # now only checked


def test_security_settings_are_checked_and_the_password_never_shows() -> None:
    """SASL needs a known mechanism, user and password; the password stays out of repr."""
    env = {"FLOWHOOK_SECURITY_PROTOCOL": "SASL_SSL", "FLOWHOOK_SASL_MECHANISM": "SCRAM-SHA-512",
           "FLOWHOOK_SASL_USERNAME": "app", "FLOWHOOK_SASL_PASSWORD": "hunter2"}
    settings = Settings.from_env(env)
    assert "hunter2" not in repr(settings)
    assert settings.as_env()["FLOWHOOK_SASL_PASSWORD"] == "hunter2"  # child workers need it
    with pytest.raises(Exception, match="FLOWHOOK_SASL_MECHANISM='GSSAPI'"):
        Settings.from_env({**env, "FLOWHOOK_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(Exception, match="FLOWHOOK_SECURITY_PROTOCOL='TLS'"):
        Settings.from_env({**env, "FLOWHOOK_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(Exception, match="needs FLOWHOOK_SASL_USERNAME and FLOWHOOK_SASL_PASSWORD"):
        Settings.from_env({k: v for k, v in env.items() if k != "FLOWHOOK_SASL_PASSWORD"})


async def _topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from processor.kafka import make_admin

    admin = make_admin(settings, "flowhook-test")
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


@pytest.mark.kafka
async def test_on_kafka_the_changelog_is_compacted_with_the_planned_configs(settings: Settings) -> None:
    """On Apache Kafka the topics Faust and Flowhook create carry the planned cleanup, min ISR,
    record size and retention (the embedded broker does not keep topic configs)."""
    from tests.engine_helpers import InProcessEngine, definition, publish_flows

    await publish_flows(settings, definition("plain"))
    async with InProcessEngine(settings) as running:
        for _ in range(200):
            if running.engine.ready:
                break
            await asyncio.sleep(0.1)
        assert running.engine.ready
    planned = {t.name: t for t in planned_topics(settings)}
    changelog = f"{settings.topic_prefix}processor-profiles-changelog"
    configs = await _topic_configs(settings, [changelog, settings.topics.events, settings.topics.results])
    for name, actual in configs.items():
        for key, value in planned[name].configs.items():
            assert actual[key] == value, (name, key)
    assert configs[changelog]["cleanup.policy"] == "compact"
