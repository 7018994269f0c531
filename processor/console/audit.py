"""The audit trail: every change made through the console, on the `audit` topic.

A record says who (user and role), what (`action` and `detail`), when, and which flow and
version (schemas/audit.schema.json). Records are keyed by flow id, or by user name for
user changes, so one flow's trail is in order on one partition. The console's own index
reads the topic back to show the trail per flow, so every console process shows every
other's changes. Nothing secret goes in: no password, hash, TOTP secret or header value.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from processor import records
from processor.clock import iso, now_ms
from processor.kafka import ensure_topics, make_producer
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)


def audit_record(*, who: str, role: str | None, action: str, flow_id: str | None = None,
                 flow_version: int | None = None, detail: dict[str, Any] | None = None,
                 at_ms: int | None = None) -> dict[str, Any]:
    """One audit record (see schemas/audit.schema.json)."""
    return records.as_dict(records.Audit(
        id=f"aud_{secrets.token_hex(12)}", at=iso(at_ms if at_ms is not None else now_ms()), who=who,
        role=role, action=action, flow_id=flow_id, flow_version=flow_version, detail=detail or {},  # type: ignore[arg-type]
    ))


class AuditLog:
    """A producer of audit records, started once per console process (or per CLI command)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = make_producer(settings)
        self._started = False

    async def start(self) -> None:
        await ensure_topics(self.settings, [self.settings.topics.audit])
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()

    async def write(self, record: dict[str, Any]) -> None:
        """Produce and wait for the broker's ack: a change is not done until it is audited."""
        key = record["flow_id"] or record["detail"].get("user") or record["who"]
        await self._producer.send_and_wait(self.settings.topics.audit, orjson.dumps(record),
                                           key=str(key).encode())
        log.info("audit_written", action=record["action"], who=record["who"], flow_id=record["flow_id"])


async def write_once(settings: Settings, record: dict[str, Any]) -> None:
    """Start a producer, write one record, stop (the `users` commands)."""
    audit = AuditLog(settings)
    await audit.start()
    try:
        await audit.write(record)
    finally:
        await audit.stop()
