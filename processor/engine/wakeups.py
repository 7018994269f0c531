"""Wake-up scheduling: the due index, refilled after recovery, drained by a timer.

Every DUE_TICK_S the timer writes a wake-up record for each profile whose next due time
has passed (at most WAKEUPS_PER_TICK); the agent handles it like any input, so the table
changes only there. The index lives in memory: after each recovery it is rebuilt from the
profiles this worker now owns, and a revoked partition's profiles leave it.

The rebuild reads every stored profile, so it grows with the state (about 7 s of a
restart at 50,000 profiles when it ran inside the recovery). It runs in the background
instead: the worker is ready as soon as its table is recovered, the agent handles records
meanwhile, and a wake-up that fell due while the worker was down goes out once the rebuild
has read its profile. `due.DueIndex` keeps the agent's newer word over what the rebuild
read (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import faust

from processor import records
from processor.clock import iso
from processor.engine import faust_compat
from processor.engine.core import unscheduled_dates
from processor.engine.due import DueIndex
from processor.engine.flowset import FlowSet
from processor.engine.state import due_of, due_time_of, never_due
from processor.flows.model import Flow
from processor.logs import get_logger
from processor.records.types import WakeReason

log = get_logger(__name__)

DUE_TICK_S: Final = 0.1
# At most this many wake-ups per tick, so catching up after downtime cannot flood the
# wake-up topic (and the agent) faster than it drains: about 2,000 profiles a second.
WAKEUPS_PER_TICK: Final = 200
# Stored profiles the rebuild reads between yields to the event loop (a few ms of work), so
# the agent and the timer keep running during a rebuild of a large state.
REBUILD_CHUNK: Final = 2_000


class WakeUps:
    """The due index and the timer that turns due profiles into wake-up records."""

    def __init__(self, app: faust.App, topic: str, flows: FlowSet, clock: Callable[[], int],
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.app, self.topic, self.flows, self.clock = app, topic, flows, clock
        self.due = DueIndex()
        self._on_failure = on_failure
        self._rebuild: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """Send the wake-ups that are due now."""
        for profile_id, partition, due_ms, reason in self.due.pop_due(self.clock(), WAKEUPS_PER_TICK):
            # The due index holds only the reasons the core gives (`delay`, `date_property`).
            wake = records.WakeUp(profile_id=profile_id, due_at=iso(due_ms), reason=cast(WakeReason, reason))
            value = records.encode(wake)
            await self.app.producer.send(self.topic, profile_id.encode(), value, partition, None, None)

    def drop(self, revoked: Iterable[Any]) -> None:
        """Forget the profiles of revoked partitions (their new owner schedules them); a
        rebuild in progress stops (the recovery after the rebalance starts another)."""
        self.cancel_rebuild()
        self.due.drop_partitions({tp.partition for tp in revoked})

    @property
    def rebuilding(self) -> bool:
        return self.due.rebuilding

    def rebuild(self, table: faust.Table) -> None:
        """Refill the due index from every profile this worker now owns, in the background
        (a rebuild already running starts over).

        A profile with a date property that a date-triggered flow has not scheduled yet (the
        flow was published after the profile was last seen) is due now: its wake-up
        schedules it (through the agent, the only place the table may change).
        """
        self.cancel_rebuild()
        self.due.begin_rebuild()
        self._rebuild = asyncio.ensure_future(self._rebuild_from(table))

    async def rebuilt(self) -> None:
        """Until the rebuild in progress, if any, has ended."""
        if self._rebuild is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._rebuild)

    def cancel_rebuild(self) -> None:
        if self._rebuild is not None and not self._rebuild.done():
            self._rebuild.cancel()
        self.due.end_rebuild()

    async def _rebuild_from(self, table: faust.Table) -> None:
        started, now = time.monotonic(), self.clock()
        dated = bool(self.flows.dated())
        read = 0
        try:
            for raw in faust_compat.stored_values(table):
                read += 1
                if read % REBUILD_CHUNK == 0:
                    await asyncio.sleep(0)  # let the agent and the timer run
                self._index(raw, dated, now)
        except Exception as exc:  # a store that cannot be read (a cancel is not an Exception: it goes on up)
            log.exception("due_index_rebuild_failed", profiles_read=read)
            if self._on_failure is not None:
                self._on_failure(exc)
            return
        finally:
            self.due.end_rebuild()
        log.info("due_index_rebuilt", profiles=read, profiles_due=len(self.due),
                 seconds=round(time.monotonic() - started, 3))

    def _index(self, raw: bytes | None, dated: bool, now: int) -> None:
        if raw is None:
            return
        if not dated:  # the due time is all that matters
            if not never_due(raw):  # else nothing of it falls due: no need to decode it
                profile_id, partition, due_ms, reason = due_time_of(raw)
                self.due.set_rebuilt(profile_id, due_ms, partition, reason)
            return
        summary = due_of(raw)
        due_ms, reason = summary.due_ms, summary.reason
        if unscheduled_dates(summary.profile, summary.dated_flows, self.flows):
            due_ms, reason = now, "date_property"
        self.due.set_rebuilt(summary.profile_id, due_ms, summary.partition, reason)

    def on_flow_change(self, flow: Flow | None, table: faust.Table, ready: bool) -> None:
        """A date-triggered flow was published or changed: look for profiles to schedule."""
        if flow is not None and flow.trigger.kind == "date_property" and ready:
            self.rebuild(table)
