"""Which input offsets may be committed, and when to read a partition again (pure).

The processor's input partitions (events, profiles, wake-ups and their repartition topics)
are never compacted and our producers write no transaction markers, so every offset of
theirs holds a record. Faust's fetch and commit path, though, can let records go by
unprocessed in a rebalance and still count them as done (see
`engine.faust_compat.install_input_guards`). So the processor keeps its own account: an
input partition is committed only up to the end of the unbroken run of offsets its batch
path processed, counted from the committed offset; a partition stuck below a record it
never processed reads that record again. These are the rules; the Kafka side is there.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["FETCHES_BEFORE_CHECK", "IDLE_COMMITS", "SKIPPED_COMMITS", "Progress", "StallWatch"]

# Commits in a row (one a second) at which a partition's head is missing before it is read
# again: soon when later records were processed (the head was passed over), later when it
# was only read (it may still be on its way through Faust's buffers).
SKIPPED_COMMITS: Final = 2
IDLE_COMMITS: Final = 5
# Reads again of the same head, still missing, before an independent read looks at it
# (it could hold no record after all: retention deleted it, or a broker left a hole).
FETCHES_BEFORE_CHECK: Final = 2

Action = Literal["fetch", "check"]


class Progress:
    """Per input partition: the offsets the batch path processed and not yet committed, and
    the offsets an independent read found holding no record (both count as done)."""

    def __init__(self) -> None:
        self._done: dict[Hashable, set[int]] = {}

    def processed(self, tp: Hashable, offsets: Iterable[int]) -> None:
        self._done.setdefault(tp, set()).update(offsets)

    def no_record(self, tp: Hashable, start: int, end: int) -> None:
        """Offsets `start` .. `end - 1` hold no record (seen by an independent read)."""
        self.processed(tp, range(start, end))

    def commit_point(self, tp: Hashable, base: int) -> int | None:
        """The offset to commit when `base` is the committed one: one past the unbroken run of
        done offsets from `base`, or None when `base` itself is not done. What it passes (and
        anything below `base`) is forgotten."""
        done = self._done.get(tp)
        if not done:
            return None
        end = base
        while end in done:
            done.discard(end)
            end += 1
        if done and min(done) < end:
            done.difference_update([o for o in done if o < end])
        return end if end > base else None

    def ahead(self, tp: Hashable, base: int) -> bool:
        """Some offset after `base` was processed (so `base` was passed over)."""
        return any(offset > base for offset in self._done.get(tp, ()))

    def forget(self, tps: Iterable[Hashable]) -> None:
        """The partitions were revoked: what was done there is the next owner's to redo."""
        for tp in tps:
            self._done.pop(tp, None)


@dataclass
class _Stall:
    head: int
    commits: int = 0
    fetches: int = 0


class StallWatch:
    """Counts the commits at which a partition stays below the same missing head, and says
    when to read the head again, and when instead to check whether it holds a record."""

    def __init__(self, skipped: int = SKIPPED_COMMITS, idle: int = IDLE_COMMITS,
                 fetches: int = FETCHES_BEFORE_CHECK) -> None:
        self.skipped, self.idle, self.fetches = skipped, idle, fetches
        self._stalls: dict[Hashable, _Stall] = {}

    def missing(self, tp: Hashable, head: int, *, passed: bool) -> Action | None:
        """One more commit with `head` missing on `tp`; `passed` when later offsets were
        processed. Returns what to do now, if anything."""
        stall = self._stalls.get(tp)
        if stall is None or stall.head != head:
            stall = self._stalls[tp] = _Stall(head)
        stall.commits += 1
        if stall.commits < (self.skipped if passed else self.idle):
            return None
        stall.commits = 0
        stall.fetches += 1
        if stall.fetches > self.fetches:
            stall.fetches = 0
            return "check"
        return "fetch"

    def moved(self, tp: Hashable) -> None:
        """The partition committed, or has nothing read past its head: nothing is stalled."""
        self._stalls.pop(tp, None)
