"""The per-worker index of due wake-ups: which profile falls due when.

Rebuilt from the table after every assignment/recovery, pruned when partitions are
revoked, fed by the agent after every record. Entries are replaced lazily: the heap may
hold stale entries, `_due` holds the truth.

A rebuild reads the store while the agent keeps running (`wakeups.WakeUps.rebuild`), so
what it reads of a profile may be older than what the agent has since written and told
the index. Between `begin_rebuild` and `end_rebuild` the index remembers every profile the
agent set or the timer popped ("fresh"), and `set_rebuilt` leaves those alone.
"""

from __future__ import annotations

import builtins
import heapq


class DueIndex:
    """Profile id -> (due ms, partition, reason), ordered by due time."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, tuple[int, int, str]] = {}
        self._fresh: set[str] | None = None  # a set while a rebuild runs

    def set(self, profile_id: str, due_ms: int | None, partition: int, reason: str = "delay") -> None:
        """Record when `profile_id` (on `partition`) falls due next, and why; None clears it."""
        if self._fresh is not None:
            self._fresh.add(profile_id)
        self._put(profile_id, due_ms, partition, reason)

    def set_rebuilt(self, profile_id: str, due_ms: int | None, partition: int, reason: str) -> bool:
        """`set` from what a rebuild read; ignored (False) for a profile set since it began."""
        if self._fresh is not None and profile_id in self._fresh:
            return False
        self._put(profile_id, due_ms, partition, reason)
        return True

    def _put(self, profile_id: str, due_ms: int | None, partition: int, reason: str) -> None:
        if due_ms is None:
            self._due.pop(profile_id, None)
            return
        entry = (due_ms, partition, reason)
        if self._due.get(profile_id) == entry:
            return
        self._due[profile_id] = entry
        heapq.heappush(self._heap, (due_ms, profile_id))

    def pop_due(self, now_ms: int, limit: int) -> list[tuple[str, int, int, str]]:
        """Up to `limit` (profile id, partition, due ms, reason) that fell due, removed."""
        out: list[tuple[str, int, int, str]] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now_ms:
            due_ms, profile_id = heapq.heappop(self._heap)
            entry = self._due.get(profile_id)
            if entry is None or entry[0] != due_ms:
                continue  # stale
            del self._due[profile_id]
            if self._fresh is not None:  # its wake-up is on its way: a rebuild must not add it again
                self._fresh.add(profile_id)
            out.append((profile_id, entry[1], due_ms, entry[2]))
        return out

    def begin_rebuild(self) -> None:
        """Empty the index and start remembering fresh profiles (see the module docstring)."""
        self.clear()
        self._fresh = set()

    def end_rebuild(self) -> None:
        self._fresh = None

    @property
    def rebuilding(self) -> bool:
        return self._fresh is not None

    def drop_partitions(self, partitions: builtins.set[int]) -> None:  # `set` is a method here
        """Forget profiles of partitions this worker no longer owns."""
        self._due = {k: v for k, v in self._due.items() if v[1] not in partitions}

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def __len__(self) -> int:
        return len(self._due)
