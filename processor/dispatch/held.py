"""The Needs-Review queue: deliveries of manual flows, waiting for someone to send or cancel them.

As in Klaviyo, a webhook step of a flow in `manual` status does not send: the delivery waits
in a queue ("Needs Review") until a person sends it or cancels it, one by one or all of a
flow's. Moving the flow to `live` afterwards does not release what is already waiting; only
new deliveries go out on their own.

How it is kept (no state besides topics):
1. the dispatcher, for a webhook-due record with mode `held`, writes the record as it is to
   the held topic and a `held` result to the results topic;
2. the queue is every record on the held topic whose latest result is still `held`;
3. *send* produces the record again on the webhooks topic as a fresh first try with mode
   `send`, the same delivery id (so the same `webhook-id`), through the real dispatcher,
   whose results then replace `held`;
4. *cancel* writes a `cancelled` result (nothing is sent), which takes it out of the queue.

The pure part (`pending`, `select`, `released`, `cancelled`) is shared by `flowhook held`
and the console; `read_queue`, `send` and `cancel` are the Kafka edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from processor import records
from processor.dispatch.replay import fresh_attempt, produce_all
from processor.kafka import ensure_topics
from processor.logs import get_logger
from processor.ops.reading import latest_outcomes, read_dues
from processor.records.due import due_from
from processor.settings import Settings

log = get_logger(__name__)

__all__ = ["HeldDelivery", "Selection", "cancel", "cancelled", "pending", "read_queue", "released",
           "select", "send"]

CANCEL_REASON = "cancelled from the Needs-Review queue: not sent"


@dataclass(frozen=True)
class HeldDelivery:
    """One delivery waiting in the queue: its webhook-due record and when it was held (ms)."""

    due: dict[str, Any]
    held_at_ms: int

    @property
    def delivery_id(self) -> str:
        return str(self.due["delivery_id"])

    @property
    def flow_id(self) -> str:
        return str(self.due["flow_id"])

    def row(self) -> dict[str, Any]:
        """What `flowhook held list` and the console show of it."""
        request = self.due["request"]
        return {"delivery_id": self.delivery_id, "flow_id": self.flow_id, "step_id": self.due["step_id"],
                "profile_id": self.due["profile_id"], "event_id": self.due["event_id"],
                "method": request["method"], "destination": records.destination(request["url"]),
                "due_at": self.due["due_at"]}


@dataclass(frozen=True)
class Selection:
    """Which queued deliveries to act on: given ids, all of one flow, or everything."""

    delivery_ids: tuple[str, ...] = ()
    flow_id: str | None = None
    everything: bool = False

    def matches(self, held: HeldDelivery) -> bool:
        if self.delivery_ids and held.delivery_id not in self.delivery_ids:
            return False
        if self.flow_id is not None and held.flow_id != self.flow_id:
            return False
        return bool(self.delivery_ids or self.flow_id is not None or self.everything)


def pending(held_records: Iterable[tuple[int, dict[str, Any]]], latest: dict[str, str]) -> list[HeldDelivery]:
    """The queue: the last held copy of each delivery whose latest outcome is still `held`."""
    last: dict[str, HeldDelivery] = {}
    for held_at, due in held_records:
        last[due["delivery_id"]] = HeldDelivery(due, held_at)
    return [h for d, h in last.items() if latest.get(d, "held") == "held"]


def select(queue: Sequence[HeldDelivery], selection: Selection) -> list[HeldDelivery]:
    """The queued deliveries the selection names."""
    return [held for held in queue if selection.matches(held)]


def released(due: dict[str, Any]) -> dict[str, Any]:
    """A held record as a fresh first try that the dispatcher sends (same delivery id), made
    the way replay makes one."""
    return {**fresh_attempt(due), "mode": "send", "error": None}


def cancelled(due: dict[str, Any]) -> dict[str, Any]:
    """The `cancelled` result record of a held delivery."""
    return records.as_dict(records.delivery_result(due_from(due), outcome="cancelled", error=CANCEL_REASON))


# --- the Kafka edge ----------------------------------------------------------------------


async def read_queue(settings: Settings, *, idle_s: float = 1.0) -> list[HeldDelivery]:
    """The Needs-Review queue as the topics hold it now, oldest first."""
    await ensure_topics(settings, [settings.topics.held, settings.topics.results])
    held, (latest, _at) = await asyncio.gather(read_dues(settings, [settings.topics.held], idle_s),
                                               latest_outcomes(settings, idle_s))
    return sorted(pending(held, latest), key=lambda h: h.held_at_ms)


async def send(settings: Settings, selection: Selection, *, idle_s: float = 1.0) -> list[HeldDelivery]:
    """Send the selected queued deliveries (with their original webhook-id); returns them."""
    chosen = select(await read_queue(settings, idle_s=idle_s), selection)
    await produce_all(settings, [(settings.topics.webhooks, h.delivery_id, released(h.due)) for h in chosen])
    log.info("held_sent", count=len(chosen), flow_id=selection.flow_id)
    return chosen


async def cancel(settings: Settings, selection: Selection, *, idle_s: float = 1.0) -> list[HeldDelivery]:
    """Cancel the selected queued deliveries (a `cancelled` result each, nothing sent)."""
    chosen = select(await read_queue(settings, idle_s=idle_s), selection)
    await produce_all(settings, [(settings.topics.results, h.delivery_id, cancelled(h.due)) for h in chosen])
    log.info("held_cancelled", count=len(chosen), flow_id=selection.flow_id)
    return chosen
