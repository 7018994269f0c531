"""Wake-up scheduling: the due index, refilled after recovery, drained by a timer.

Every DUE_TICK_S the timer writes a wake-up record for each profile whose next due time
has passed (at most WAKEUPS_PER_TICK); the agent handles it like any input, so the table
changes only there. The index lives in memory: after each recovery it is rebuilt from the
profiles this worker now owns, and a revoked partition's profiles leave it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import faust

from processor import records
from processor.clock import iso
from processor.engine.core import unscheduled_dates
from processor.engine.due import DueIndex
from processor.engine.flowset import FlowSet
from processor.engine.state import due_of, never_due
from processor.flows.model import Flow
from processor.logs import get_logger
from processor.records.types import WakeReason

log = get_logger(__name__)

DUE_TICK_S: Final = 0.1
# At most this many wake-ups per tick, so catching up after downtime cannot flood the
# wake-up topic (and the agent) faster than it drains: about 2,000 profiles a second.
WAKEUPS_PER_TICK: Final = 200


class WakeUps:
    """The due index and the timer that turns due profiles into wake-up records."""

    def __init__(self, app: faust.App, topic: str, flows: FlowSet, clock: Callable[[], int]) -> None:
        self.app, self.topic, self.flows, self.clock = app, topic, flows, clock
        self.due = DueIndex()

    async def tick(self) -> None:
        """Send the wake-ups that are due now."""
        for profile_id, partition, due_ms, reason in self.due.pop_due(self.clock(), WAKEUPS_PER_TICK):
            # The due index holds only the reasons the core gives (`delay`, `date_property`).
            wake = records.WakeUp(profile_id=profile_id, due_at=iso(due_ms), reason=cast(WakeReason, reason))
            value = records.encode(wake)
            await self.app.producer.send(self.topic, profile_id.encode(), value, partition, None, None)

    def drop(self, revoked: Iterable[Any]) -> None:
        """Forget the profiles of revoked partitions (their new owner schedules them)."""
        self.due.drop_partitions({tp.partition for tp in revoked})

    def rebuild(self, table: faust.Table) -> None:
        """Refill the due index from every profile this worker now owns.

        A profile with a date property that a date-triggered flow has not scheduled yet (the
        flow was published after the profile was last seen) is due now: its wake-up
        schedules it (through the agent, the only place the table may change).
        """
        self.due.clear()
        now = self.clock()
        dated = bool(self.flows.dated())
        for raw in table.data.values():
            if raw is None or (not dated and never_due(raw)):
                continue  # nothing of it falls due: no need to decode it (restart time)
            summary = due_of(raw)
            due_ms, reason = summary.due_ms, summary.reason
            if unscheduled_dates(summary.profile, summary.dated_flows, self.flows):
                due_ms, reason = now, "date_property"
            self.due.set(summary.profile_id, due_ms, summary.partition, reason)
        log.info("due_index_rebuilt", profiles_due=len(self.due))

    def on_flow_change(self, flow: Flow | None, table: faust.Table, ready: bool) -> None:
        """A date-triggered flow was published or changed: look for profiles to schedule."""
        if flow is not None and flow.trigger.kind == "date_property" and ready:
            self.rebuild(table)
