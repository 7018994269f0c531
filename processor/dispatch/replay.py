"""`flowhook replay`: send `dead` deliveries again with their original webhook-id.

Steps:

1. Read the dead-letter topic (the webhook-due records as they were when they died, with
   `dead_reason`) and the results topic, each until idle.
2. Keep the deliveries whose latest result is still `dead` (a delivery replayed and
   delivered since is not sent twice) and that match the filter (flow, time of death from
   the dead-letter record's timestamp).
3. Produce each as a fresh first try on the webhooks topic: attempt 1, no not-before, no
   first-attempt time (so max_age counts anew), same delivery id, hence the same webhook-id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from processor.clock import now_ms, parse_iso_ms
from processor.durations import DurationError, parse_duration_ms
from processor.kafka import ensure_topics, make_producer, read_records
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["ReplayFilter", "fresh_attempt", "parse_time", "replay_dead", "requeue", "select"]


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead deliveries to replay: a flow and a window on the time they died."""

    flow_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, due: dict[str, Any], died_at_ms: int) -> bool:
        if self.flow_id is not None and due.get("flow_id") != self.flow_id:
            return False
        if self.since_ms is not None and died_at_ms < self.since_ms:
            return False
        return self.until_ms is None or died_at_ms < self.until_ms


def parse_time(text: str | None, now: int | None = None) -> int | None:
    """ISO-8601, or a duration meaning that long ago ('2h'); None stays None."""
    if text is None:
        return None
    try:
        return parse_iso_ms(text)
    except ValueError:
        pass
    try:
        return (now if now is not None else now_ms()) - parse_duration_ms(text)
    except DurationError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor a duration like 2h") from None


def fresh_attempt(dead: dict[str, Any]) -> dict[str, Any]:
    """A dead-letter record as a new first try, keeping its delivery id (the webhook-id)."""
    again = {k: v for k, v in dead.items() if k != "dead_reason"}
    again.update(attempt=1, not_before=None, first_attempt_at=None)
    return again


def select(
    dead_records: list[tuple[int, dict[str, Any]]],
    latest_outcome: dict[str, str],
    selection: ReplayFilter,
) -> list[dict[str, Any]]:
    """The dead deliveries to replay: last death per delivery, still dead, matching the filter."""
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for died_at, due in dead_records:
        last[due["delivery_id"]] = (died_at, due)
    return [
        due
        for delivery, (died_at, due) in last.items()
        if latest_outcome.get(delivery, "dead") == "dead" and selection.matches(due, died_at)
    ]


async def _read_dead(settings: Settings, idle_s: float) -> list[tuple[int, dict[str, Any]]]:
    found = []
    async for record in read_records(settings, settings.topics.dead_letter, idle_s=idle_s):
        try:
            found.append((record.timestamp, orjson.loads(record.value)))
        except orjson.JSONDecodeError:
            log.warning("dead_letter_unreadable", partition=record.partition, offset=record.offset)
    return found


async def _read_latest_outcomes(settings: Settings, idle_s: float) -> dict[str, str]:
    latest: dict[str, str] = {}
    async for record in read_records(settings, settings.topics.results, idle_s=idle_s):
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if value.get("type") == "delivery":
            latest[value["delivery_id"]] = value["outcome"]
    return latest


async def requeue(settings: Settings, dues: list[dict[str, Any]]) -> int:
    """Produce each webhook-due record as a fresh first try (same delivery id, so same webhook-id)."""
    producer = make_producer(settings)
    await producer.start()
    try:
        acks = [
            await producer.send(
                settings.topics.webhooks, orjson.dumps(fresh_attempt(due)), key=due["delivery_id"].encode()
            )
            for due in dues
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return len(dues)


async def replay_dead(settings: Settings, selection: ReplayFilter, *, idle_s: float = 2.0) -> dict[str, int]:
    """Re-queue the selected dead deliveries on the webhooks topic; counts of replayed and skipped."""
    await ensure_topics(settings)
    dead, latest = await asyncio.gather(_read_dead(settings, idle_s), _read_latest_outcomes(settings, idle_s))
    chosen = select(dead, latest, selection)
    await requeue(settings, chosen)
    distinct = len({due["delivery_id"] for _, due in dead})
    log.info("replayed", replayed=len(chosen), skipped=distinct - len(chosen))
    return {"replayed": len(chosen), "skipped": distinct - len(chosen)}
