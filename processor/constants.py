"""Every topic suffix, header name and time constant in one place."""

from __future__ import annotations

from typing import Final

# Topic names are FLOWHOOK_TOPIC_PREFIX + suffix (prefix default "flowhook.").
DEFAULT_TOPIC_PREFIX: Final = "flowhook."
EVENTS: Final = "events"
PROFILES: Final = "profiles"
FLOWS: Final = "flows"
WEBHOOKS: Final = "webhooks"
RESULTS: Final = "results"
EVENTS_INVALID: Final = "events.invalid"
WAKEUPS: Final = "wakeups"
DEAD_LETTER: Final = "webhooks.dead"
AUDIT: Final = "audit"  # console changes: who, what, when (schemas/audit.schema.json)
# Events and profile updates that arrived off their profile's home partition (e.g. from a
# librdkafka client's CRC32 partitioner) go through these, co-partitioned with the inputs.
EVENTS_REPARTITION: Final = "events.repartition"
PROFILES_REPARTITION: Final = "profiles.repartition"
# The Needs-Review queue: webhook-due records of manual flows, as they were when held.
HELD: Final = "webhooks.held"
# Retry tiers: a record waits in the tier whose delay is the largest one not above its
# own delay, so records in one tier are nearly ordered by due time (see dispatch.retry_policy).
RETRY_TIER_DELAYS_MS: Final = (1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000)

DEFAULT_PARTITIONS: Final = 8
# Retention of the topics Flowhook creates (the compacted flows topic keeps every flow).
# Inputs and due records only need to outlive a long outage of the workers; results and
# dead letters are for analytics and replay, so they stay longer. Retry tiers hold a record
# at most a tier's delay, but an outage can add to that.
DAY_MS: Final = 86_400_000
DEFAULT_RETENTION_MS: Final = 7 * DAY_MS
TOPIC_RETENTION_MS: Final = {
    "events": 7 * DAY_MS,
    "profiles": 7 * DAY_MS,
    "wakeups": 1 * DAY_MS,
    "events.repartition": 1 * DAY_MS,
    "profiles.repartition": 1 * DAY_MS,
    "webhooks": 7 * DAY_MS,
    "retry": 7 * DAY_MS,
    "results": 30 * DAY_MS,
    "events.invalid": 30 * DAY_MS,
    "webhooks.dead": 30 * DAY_MS,
    "audit": 365 * DAY_MS,  # who changed what: kept for a year
    # The Needs-Review queue: no longer than results, whose latest outcomes take a delivery out of it.
    "webhooks.held": 30 * DAY_MS,
}
DEFAULT_BROKERS: Final = "127.0.0.1:9092"
DEFAULT_BROKER_PORT: Final = 9092

# Delivery
USER_AGENT_PREFIX: Final = "flowhook/"
HEADER_WEBHOOK_ID: Final = "webhook-id"
HEADER_WEBHOOK_TIMESTAMP: Final = "webhook-timestamp"
HEADER_WEBHOOK_SIGNATURE: Final = "webhook-signature"
RESERVED_HEADERS: Final = frozenset(
    {
        "content-type",
        "user-agent",
        HEADER_WEBHOOK_ID,
        HEADER_WEBHOOK_TIMESTAMP,
        HEADER_WEBHOOK_SIGNATURE,
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)
DEFAULT_TIMEOUT_MS: Final = 10_000
DEFAULT_MAX_AGE_MS: Final = 24 * 3_600_000
DEFAULT_RETRY_SCHEDULE_MS: Final = (
    5_000,
    30_000,
    120_000,
    600_000,
    1_800_000,
    3_600_000,
    10_800_000,
    21_600_000,
)
RETRY_JITTER: Final = 0.20
MAX_RESPONSE_BYTES: Final = 64 * 1024
RESPONSE_EXCERPT_BYTES: Final = 1024
DEFAULT_INFLIGHT: Final = 256
DEFAULT_PER_DESTINATION: Final = 32

# Input limits
MAX_INPUT_RECORD_BYTES: Final = 1024 * 1024
# One string (key or value) of an event or profile update: longer ones would be stored in
# the profile's state and rendered into bodies, and a state record over Kafka's default
# 1 MiB limit would stop the processor.
MAX_INPUT_STRING_BYTES: Final = 64 * 1024
# Event times outside these years are refused (delays from year 9999 overflow dates).
EVENT_YEARS: Final = (1970, 2999)
# An invalid-input copy keeps at most this many bytes of the original value (then its size
# and SHA-256), so the copy always fits where the original did not.
INVALID_COPY_VALUE_BYTES: Final = 64 * 1024
INVALID_COPY_KEY_BYTES: Final = 1024
# What the processor writes per record must fit Kafka's default 1 MiB record limit: a
# record whose outputs or new profile state would be larger is refused instead.
MAX_OUTPUT_RECORD_BYTES: Final = 900 * 1024
# Copying a refused record aside is retried this often before the worker stops.
INVALID_COPY_TRIES: Final = 5
# Record size on Kafka: producers build requests of at most MAX_REQUEST_BYTES; brokers and
# every topic Flowhook creates take batches up to MAX_MESSAGE_BYTES (one largest record plus
# the batch's framing), so a record the producer accepts is never refused by the broker.
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
MAX_MESSAGE_BYTES: Final = MAX_REQUEST_BYTES + 4096

# Secrets come from the environment as FLOWHOOK_SECRET_<NAME>.
SECRET_ENV_PREFIX: Final = "FLOWHOOK_SECRET_"  # noqa: S105 - a variable-name prefix, not a secret
