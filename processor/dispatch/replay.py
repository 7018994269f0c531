"""`flowhook replay`: send `dead` (or `failed`, or `invalid`) deliveries again with their
original webhook-id.

Steps:

1. Read the results topic until idle, and the records to send again: for `dead`, the
   dead-letter topic (the webhook-due records as they were when they died, with
   `dead_reason`); for `failed` and `invalid`, the webhooks topic and the retry tiers (the
   last record of each delivery).
2. Keep the deliveries whose latest result is still that outcome (a delivery replayed and
   delivered since is not sent twice) and that match the filter (flow, time of the outcome:
   the dead-letter record's timestamp, or the result's `finished_at`).
3. Produce each as a fresh first try on the webhooks topic: attempt 1, no not-before, no
   first-attempt time (so max_age counts anew), `replayed_at` now, same delivery id, hence
   the same webhook-id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from processor import records
from processor.clock import now_ms, parse_iso_ms
from processor.durations import DurationError, parse_duration_ms
from processor.kafka import ensure_topics, make_producer
from processor.logs import get_logger
from processor.ops.reading import latest_outcomes, read_dues
from processor.records import due as due_records
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["REPLAYABLE", "ReplayFilter", "fresh_attempt", "parse_time", "produce_all", "replay",
           "replay_dead", "requeue", "select"]

REPLAYABLE = ("dead", "failed", "invalid")


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


def fresh_attempt(dead: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """A dead-letter record as a new first try (`records.due.fresh_attempt`), as its JSON value."""
    again = due_records.fresh_attempt(due_records.due_from(dead), now if now is not None else now_ms())
    return records.as_dict(again)


def select(
    candidates: list[tuple[int, dict[str, Any]]],
    latest_outcome: dict[str, str],
    selection: ReplayFilter,
    outcome: str = "dead",
) -> list[dict[str, Any]]:
    """The deliveries to replay: last record per delivery, latest outcome still `outcome`
    (a delivery without results counts as dead only for dead letters), matching the filter."""
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for died_at, due in candidates:
        last[due["delivery_id"]] = (died_at, due)
    fallback = "dead" if outcome == "dead" else None
    return [
        due
        for delivery, (died_at, due) in last.items()
        if latest_outcome.get(delivery, fallback) == outcome and selection.matches(due, died_at)
    ]


async def requeue(settings: Settings, dues: list[dict[str, Any]]) -> int:
    """Produce each webhook-due record as a fresh first try (same delivery id, so same webhook-id)."""
    topic = settings.topics.webhooks
    await produce_all(settings, [(topic, due["delivery_id"], fresh_attempt(due)) for due in dues])
    return len(dues)


async def produce_all(settings: Settings, items: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Produce (topic, key, record) items and wait until every one is acknowledged."""
    producer = make_producer(settings)
    await producer.start()
    try:
        acks = [await producer.send(topic, orjson.dumps(value), key=key.encode())
                for topic, key, value in items]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def replay(
    settings: Settings, selection: ReplayFilter, *, outcome: str = "dead", idle_s: float = 2.0
) -> dict[str, int]:
    """Re-queue the selected deliveries on the webhooks topic; counts of replayed and skipped."""
    if outcome not in REPLAYABLE:
        raise ValueError(f"--outcome must be one of {', '.join(REPLAYABLE)}, not {outcome!r}")
    await ensure_topics(settings)
    topics = [settings.topics.dead_letter] if outcome == "dead" else [
        settings.topics.webhooks, *settings.topics.retry_tiers]
    found, (latest, at) = await asyncio.gather(read_dues(settings, topics, idle_s),
                                               latest_outcomes(settings, idle_s))
    if outcome != "dead":  # the time of a failure is its result's, not the record's
        found = [(at.get(due["delivery_id"], died), due) for died, due in found]
    chosen = select(found, latest, selection, outcome)
    await requeue(settings, chosen)
    distinct = len({due["delivery_id"] for _, due in found if latest.get(due["delivery_id"]) == outcome
                    or outcome == "dead"})
    log.info("replayed", outcome=outcome, replayed=len(chosen), skipped=distinct - len(chosen))
    return {"replayed": len(chosen), "skipped": distinct - len(chosen)}


async def replay_dead(settings: Settings, selection: ReplayFilter, *, idle_s: float = 2.0) -> dict[str, int]:
    """`replay` of dead deliveries (the default)."""
    return await replay(settings, selection, outcome="dead", idle_s=idle_s)
