"""Which input offsets may be committed, and when a gap is real (pure).

The processor's input partitions (events, profiles, wake-ups and their repartition topics)
are never compacted and our producers write no transaction markers, so their offsets run
without gaps. Faust's fetch and commit path, though, can skip records in a rebalance and
then count them as done (see `engine.faust_compat.install_input_guards`): these rules are
what the guards there decide with.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

__all__ = ["GAPS_REMEMBERED", "STALLED_COMMITS", "GapCheck", "StallWatch", "contiguous_end"]

GAPS_REMEMBERED: Final = 10_000  # gaps read once and waiting for their second read
STALLED_COMMITS: Final = 3  # commits in a row with the same first offset missing: fetch it again


def contiguous_end(acked: list[int], base: int, known_gaps: Collection[int] = ()) -> tuple[int | None, int]:
    """The offset to commit when the offsets from `base` on were acknowledged as in `acked`
    (sorted): one past the last of an unbroken run from `base`, offsets in `known_gaps` (real
    gaps) counting as done; None when the run is empty. Also how many entries of `acked` the
    run used up (including repeats and offsets below `base`)."""
    expected = base
    used = 0
    for offset in acked:
        while expected in known_gaps:
            expected += 1
        if offset > expected:
            break
        if offset == expected:
            expected += 1
        used += 1
    return (expected if expected > base else None), used


class GapCheck:
    """Which gaps were read a second time already: a gap still there then is a real one."""

    def __init__(self, capacity: int = GAPS_REMEMBERED) -> None:
        self.capacity = capacity
        self._read_once: dict[tuple[Any, int], None] = {}  # (partition, first missing offset)

    def read_again(self, tp: Any, first_missing: int) -> bool:
        """True the first time a gap starting at `first_missing` shows on `tp`: fetch it again."""
        key = (tp, first_missing)
        if key in self._read_once:
            del self._read_once[key]
            return False
        self._read_once[key] = None
        while len(self._read_once) > self.capacity:
            del self._read_once[next(iter(self._read_once))]
        return True


class StallWatch:
    """Counts commits in a row at which a partition's first offset is read but missing."""

    def __init__(self, commits: int = STALLED_COMMITS) -> None:
        self.commits = commits
        self._seen: dict[Any, tuple[int, int]] = {}  # partition -> (first missing offset, commits)

    def stalled(self, tp: Any, first_missing: int) -> bool:
        """One more commit with `first_missing` missing; True when it is time to fetch again."""
        first, seen = self._seen.get(tp, (first_missing, 0))
        seen = seen + 1 if first == first_missing else 1
        if seen >= self.commits:
            self._seen.pop(tp, None)
            return True
        self._seen[tp] = (first_missing, seen)
        return False

    def moved(self, tp: Any) -> None:
        """The partition committed again: nothing is stalled there."""
        self._seen.pop(tp, None)
