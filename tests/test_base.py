"""The base: settings, durations, records and the embedded broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from processor import records
from processor.clock import iso, parse_iso_ms
from processor.durations import DurationError, format_duration_ms, parse_duration_ms
from processor.errors import ConfigError
from processor.kafka import ensure_topics, make_producer, read_records, topic_plan
from processor.resources import shipped_dir
from processor.settings import Settings, parse_networks


def test_durations_parse_every_unit() -> None:
    """Every unit SPEC.md names parses to milliseconds."""
    assert [parse_duration_ms(x) for x in ("250ms", "5s", "2m", "3h", "2d", "1.5s")] == [
        250, 5_000, 120_000, 10_800_000, 172_800_000, 1_500,
    ]


@pytest.mark.parametrize("bad", ["5", "", "5 sec", "s", 5, None, True])
def test_durations_refuse_text_without_unit(bad: object) -> None:
    """A duration without a unit is an error that says how to write one."""
    with pytest.raises(DurationError, match="5s"):
        parse_duration_ms(bad)  # type: ignore[arg-type]


def test_duration_round_trip() -> None:
    """Formatting picks the largest exact unit."""
    assert format_duration_ms(172_800_000) == "2d"
    assert format_duration_ms(1_500) == "1500ms"


def test_iso_round_trip() -> None:
    """ISO strings with Z, offsets or none all mean the same instant."""
    ms = parse_iso_ms("2026-11-27T10:00:00Z")
    assert parse_iso_ms("2026-11-27T11:00:00+01:00") == ms
    assert parse_iso_ms("2026-11-27T10:00:00") == ms
    assert iso(ms) == "2026-11-27T10:00:00.000Z"


def test_iso_formats_each_second_once_and_agrees_with_datetime() -> None:
    """The per-second cache of `iso` gives datetime's text for every millisecond, at the
    edges of its range and outside it (negative, after 2099, floats)."""
    import random

    from processor.clock import _iso_slow

    rng = random.Random(15)
    edges = [0, 1, 999, 1000, 1001, 1_764_300_000_000, 1_764_300_000_999, 4_102_444_799_999]
    outside = [-1, -1500, 4_102_444_800_000, 253_402_300_799_999, 1_764_300_000_000.5]
    for ms in edges + outside + [rng.randrange(0, 4_102_444_800_000) for _ in range(5_000)]:
        assert iso(ms) == _iso_slow(ms), ms  # type: ignore[arg-type]
    assert [iso(1_764_300_000_000 + i) for i in (7, 70, 700)] == [
        "2025-11-28T03:20:00.007Z", "2025-11-28T03:20:00.070Z", "2025-11-28T03:20:00.700Z"]


def test_settings_from_env_and_flags() -> None:
    """Environment sets values, flags override them, bad values name the variable."""
    env = {"FLOWHOOK_PARTITIONS": "3", "FLOWHOOK_ALLOW_NETWORKS": "127.0.0.0/8, ::1/128"}
    s = Settings.from_env(env, brokers="127.0.0.1:1")
    assert s.partitions == 3 and s.brokers == "127.0.0.1:1"
    assert [str(n) for n in s.allow_networks] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="FLOWHOOK_PARTITIONS"):
        Settings.from_env({"FLOWHOOK_PARTITIONS": "zero"})
    with pytest.raises(ConfigError, match="not-a-net"):
        parse_networks("not-a-net")


def test_topic_plan_copartitions_profile_topics() -> None:
    """Events, profiles and wake-ups share one partition count; flows is compacted."""
    plan = topic_plan(Settings(partitions=6))
    assert {plan[t][0] for t in Settings().topics.keyed_by_profile} == {6}
    assert plan["flowhook.flows"][0] == 1
    assert plan["flowhook.flows"][1]["cleanup.policy"] == "compact"


def test_ids_are_derived_and_stable() -> None:
    """The same flow, profile and event always give the same run and delivery id."""
    run = records.run_id("f", "p", "e")
    assert run == records.run_id("f", "p", "e") and run != records.run_id("f", "p", "e2")
    assert records.delivery_id("f", run, "s").startswith("dlv_")


def test_destination_drops_query_and_credentials() -> None:
    """Result records never carry query strings or credentials of a URL."""
    assert (
        records.destination("https://user:pw@example.com:8443/a/b?token=x#f")
        == "https://example.com:8443/a/b"
    )


async def test_broker_round_trip(settings: Settings) -> None:
    """Topics are created and records produced to the embedded broker can be read back."""
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(settings.topics.events, b"v%d" % i, key=b"k%d" % i)
    finally:
        await producer.stop()
    seen = [r.value async for r in read_records(settings, settings.topics.events, idle_s=1.0)]
    assert sorted(seen) == sorted(b"v%d" % i for i in range(10))


@pytest.mark.parametrize("path", sorted(shipped_dir("schemas").glob("*.schema.json")), ids=lambda p: p.name)
def test_every_schema_is_valid_2020_12(path: Path) -> None:
    """Every shipped schema is itself a valid JSON Schema 2020-12 document."""
    document = orjson.loads(path.read_bytes())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)


def test_event_schema_accepts_the_spec_example_and_refuses_a_profile_without_identity() -> None:
    """SPEC.md's example event is valid; a profile with neither id nor email is not."""
    event = {"id": "evt_01", "metric": "Placed Order", "time": "2026-11-27T10:00:00Z",
             "profile": {"id": "p_42", "email": "shah@example.com", "first_name": "Shah",
                         "properties": {"address": "1 Main St"}},
             "properties": {"OrderId": "1001", "$value": 129.5, "Items": [{"sku": "A1", "qty": 2}]}}
    assert records.validation_error("event", event) is None
    assert records.validation_error("event", {**event, "profile": {"first_name": "x"}}) is not None
