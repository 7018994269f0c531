"""Typed settings, loaded from flags and the environment.

Every edge (processor, dispatcher, tools) takes one `Settings`. Secrets are not settings:
the dispatcher reads `FLOWHOOK_SECRET_<NAME>` itself at send time, so no repr can leak them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from processor import constants as c
from processor.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Topics:
    """Full topic names for one topic prefix."""

    prefix: str = c.DEFAULT_TOPIC_PREFIX

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    @property
    def events(self) -> str:
        return self.name(c.EVENTS)

    @property
    def profiles(self) -> str:
        return self.name(c.PROFILES)

    @property
    def flows(self) -> str:
        return self.name(c.FLOWS)

    @property
    def webhooks(self) -> str:
        return self.name(c.WEBHOOKS)

    @property
    def results(self) -> str:
        return self.name(c.RESULTS)

    @property
    def events_invalid(self) -> str:
        return self.name(c.EVENTS_INVALID)

    @property
    def wakeups(self) -> str:
        return self.name(c.WAKEUPS)

    @property
    def dead_letter(self) -> str:
        return self.name(c.DEAD_LETTER)

    @property
    def audit(self) -> str:
        return self.name(c.AUDIT)

    @property
    def held(self) -> str:
        return self.name(c.HELD)

    def retry_tier(self, delay_ms: int) -> str:
        return self.name(f"{c.WEBHOOKS}.retry.{delay_ms // 1000}s")

    @property
    def retry_tiers(self) -> list[str]:
        return [self.retry_tier(d) for d in c.RETRY_TIER_DELAYS_MS]

    @property
    def events_repartition(self) -> str:
        return self.name(c.EVENTS_REPARTITION)

    @property
    def profiles_repartition(self) -> str:
        return self.name(c.PROFILES_REPARTITION)

    @property
    def keyed_by_profile(self) -> list[str]:
        """Topics the processor reads together; they must share one partition count."""
        return [self.events, self.profiles, self.wakeups, self.events_repartition, self.profiles_repartition]


@dataclass(frozen=True)
class Settings:
    brokers: str = c.DEFAULT_BROKERS
    topic_prefix: str = c.DEFAULT_TOPIC_PREFIX
    partitions: int = c.DEFAULT_PARTITIONS
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False
    data_dir: Path = field(default_factory=lambda: Path(".flowhook-data"))
    store: str = "rocksdb"  # or "memory"
    log_format: str = "console"  # or "json"
    log_level: str = "info"
    # Short group timeouts: the embedded broker takes about half the session timeout to
    # finish a join, and dev/tests want seconds, not half a minute.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 10_000
    # Worker endpoints (/metrics, /healthz, /readyz): off unless a port is given.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Bearer token of the processor's read-only profile lookup; the route is absent without it.
    endpoint_token: str | None = field(default=None, repr=False)
    # Apache Kafka in production: replication of every topic Flowhook creates (Faust's
    # changelog included) and the min ISR those topics get (None: 2 from replication 3 on).
    replication: int = 1
    min_insync_replicas: int | None = None
    create_topics: bool = True  # False where admins create topics (`flowhook topics plan`)
    idempotence: bool | None = None  # None: on where the broker supports it (not the embedded one)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None

    @property
    def min_isr(self) -> int:
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return 2 if self.replication >= 3 else 1

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from FLOWHOOK_* variables; keyword overrides (from flags) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if "FLOWHOOK_BROKERS" in env:
            values["brokers"] = env["FLOWHOOK_BROKERS"]
        if "FLOWHOOK_TOPIC_PREFIX" in env:
            values["topic_prefix"] = env["FLOWHOOK_TOPIC_PREFIX"]
        if "FLOWHOOK_PARTITIONS" in env:
            values["partitions"] = _positive_int("FLOWHOOK_PARTITIONS", env["FLOWHOOK_PARTITIONS"])
        if "FLOWHOOK_ALLOW_NETWORKS" in env:
            values["allow_networks"] = parse_networks(env["FLOWHOOK_ALLOW_NETWORKS"])
        if "FLOWHOOK_ALLOW_HTTP" in env:
            values["allow_http"] = _flag(env["FLOWHOOK_ALLOW_HTTP"])
        if "FLOWHOOK_DATA_DIR" in env:
            values["data_dir"] = Path(env["FLOWHOOK_DATA_DIR"])
        if "FLOWHOOK_STORE" in env:
            values["store"] = env["FLOWHOOK_STORE"]
        if "FLOWHOOK_LOG_FORMAT" in env:
            values["log_format"] = env["FLOWHOOK_LOG_FORMAT"]
        if "FLOWHOOK_LOG_LEVEL" in env:
            values["log_level"] = env["FLOWHOOK_LOG_LEVEL"].lower()
        values.update(_endpoint_values(env))
        values.update(_kafka_values(env))
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms"):
            var = f"FLOWHOOK_{name.upper()}"
            if var in env:
                values[name] = _positive_int(var, env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.store not in ("rocksdb", "memory"):
            raise ConfigError(f"FLOWHOOK_STORE={self.store!r}: use 'rocksdb' or 'memory'")
        if self.log_format not in ("console", "json"):
            raise ConfigError(f"FLOWHOOK_LOG_FORMAT={self.log_format!r}: use 'console' or 'json'")
        if self.partitions < 1:
            raise ConfigError("FLOWHOOK_PARTITIONS must be at least 1")
        if self.min_isr > self.replication:
            raise ConfigError(f"FLOWHOOK_MIN_INSYNC_REPLICAS={self.min_isr} is above "
                              f"FLOWHOOK_REPLICATION={self.replication}")
        check_security(self)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment that gives a child process these same settings."""
        return {
            "FLOWHOOK_BROKERS": self.brokers,
            "FLOWHOOK_TOPIC_PREFIX": self.topic_prefix,
            "FLOWHOOK_PARTITIONS": str(self.partitions),
            "FLOWHOOK_ALLOW_NETWORKS": ",".join(str(n) for n in self.allow_networks),
            "FLOWHOOK_ALLOW_HTTP": "1" if self.allow_http else "0",
            "FLOWHOOK_DATA_DIR": str(self.data_dir),
            "FLOWHOOK_STORE": self.store,
            "FLOWHOOK_LOG_FORMAT": self.log_format,
            "FLOWHOOK_LOG_LEVEL": self.log_level,
            "FLOWHOOK_SESSION_TIMEOUT_MS": str(self.session_timeout_ms),
            "FLOWHOOK_HEARTBEAT_INTERVAL_MS": str(self.heartbeat_interval_ms),
            "FLOWHOOK_REBALANCE_TIMEOUT_MS": str(self.rebalance_timeout_ms),
            # Empty unless set: two children must not inherit one port from the parent's env.
            "FLOWHOOK_METRICS_PORT": "" if self.metrics_port is None else str(self.metrics_port),
            "FLOWHOOK_METRICS_HOST": self.metrics_host,
            **_kafka_env(self),
        }


def _endpoint_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The worker-endpoint settings; the token is kept out of every repr (field repr=False)."""
    values: dict[str, Any] = {}
    if env.get("FLOWHOOK_METRICS_PORT"):
        values["metrics_port"] = _port("FLOWHOOK_METRICS_PORT", env["FLOWHOOK_METRICS_PORT"])
    if env.get("FLOWHOOK_METRICS_HOST"):
        values["metrics_host"] = env["FLOWHOOK_METRICS_HOST"]
    if env.get("FLOWHOOK_ENDPOINT_TOKEN"):
        values["endpoint_token"] = env["FLOWHOOK_ENDPOINT_TOKEN"]
    return values


def _port(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a port number") from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}={text!r}: a port is 0-65535 (0: any free port)")
    return value


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _kafka_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Replication, topic creation, idempotence and security settings from FLOWHOOK_* variables."""
    values: dict[str, Any] = {}
    if "FLOWHOOK_REPLICATION" in env:
        values["replication"] = _positive_int("FLOWHOOK_REPLICATION", env["FLOWHOOK_REPLICATION"])
    if "FLOWHOOK_MIN_INSYNC_REPLICAS" in env:
        values["min_insync_replicas"] = _positive_int(
            "FLOWHOOK_MIN_INSYNC_REPLICAS", env["FLOWHOOK_MIN_INSYNC_REPLICAS"]
        )
    if "FLOWHOOK_CREATE_TOPICS" in env:
        values["create_topics"] = _flag(env["FLOWHOOK_CREATE_TOPICS"])
    idempotence = env.get("FLOWHOOK_IDEMPOTENCE", "auto").strip().lower()
    if idempotence != "auto":
        values["idempotence"] = _flag(idempotence)
    if "FLOWHOOK_SECURITY_PROTOCOL" in env:
        values["security_protocol"] = env["FLOWHOOK_SECURITY_PROTOCOL"].strip().upper()
    if "FLOWHOOK_SASL_MECHANISM" in env:
        values["sasl_mechanism"] = env["FLOWHOOK_SASL_MECHANISM"].strip().upper()
    for name in ("sasl_username", "sasl_password"):
        if f"FLOWHOOK_{name.upper()}" in env:
            values[name] = env[f"FLOWHOOK_{name.upper()}"]
    if env.get("FLOWHOOK_SSL_CAFILE"):
        values["ssl_cafile"] = Path(env["FLOWHOOK_SSL_CAFILE"])
    return values


def _kafka_env(settings: Settings) -> dict[str, str]:
    env = {
        "FLOWHOOK_REPLICATION": str(settings.replication),
        "FLOWHOOK_MIN_INSYNC_REPLICAS": str(settings.min_isr),
        "FLOWHOOK_CREATE_TOPICS": "1" if settings.create_topics else "0",
        "FLOWHOOK_IDEMPOTENCE": {None: "auto", True: "1", False: "0"}[settings.idempotence],
        "FLOWHOOK_SECURITY_PROTOCOL": settings.security_protocol,
    }
    optional = {
        "FLOWHOOK_SASL_MECHANISM": settings.sasl_mechanism,
        "FLOWHOOK_SASL_USERNAME": settings.sasl_username,
        "FLOWHOOK_SASL_PASSWORD": settings.sasl_password,
        "FLOWHOOK_SSL_CAFILE": str(settings.ssl_cafile) if settings.ssl_cafile else None,
    }
    env.update({k: v for k, v in optional.items() if v is not None})
    return env


def check_security(settings: Settings) -> None:
    """A security set-up that cannot work is a ConfigError naming the variable."""
    protocol = settings.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        choices = ", ".join(SECURITY_PROTOCOLS)
        raise ConfigError(f"FLOWHOOK_SECURITY_PROTOCOL={protocol!r}: use one of {choices}")
    if not protocol.startswith("SASL_"):
        return
    if settings.sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"FLOWHOOK_SASL_MECHANISM={settings.sasl_mechanism!r}: use one of {', '.join(SASL_MECHANISMS)}"
        )
    if not settings.sasl_username or settings.sasl_password is None:
        raise ConfigError(f"{protocol} needs FLOWHOOK_SASL_USERNAME and FLOWHOOK_SASL_PASSWORD")


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """'127.0.0.0/8, ::1/128' -> networks; a bad entry is a ConfigError naming it."""
    networks = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigError(f"FLOWHOOK_ALLOW_NETWORKS: {part!r} is not a network: {exc}") from None
    return tuple(networks)


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a whole number") from None
    if value < 1:
        raise ConfigError(f"{name}={text!r}: must be at least 1")
    return value


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")
