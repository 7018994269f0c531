"""The per-worker index of due wake-ups: which profile falls due when.

Rebuilt from the table after every assignment/recovery, pruned when partitions are
revoked, fed by the agent after every record. Entries are replaced lazily: the heap may
hold stale entries, `_due` holds the truth.
"""

from __future__ import annotations

import builtins
import heapq


class DueIndex:
    """Profile id -> (due ms, partition, reason), ordered by due time."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, tuple[int, int, str]] = {}

    def set(self, profile_id: str, due_ms: int | None, partition: int, reason: str = "delay") -> None:
        """Record when `profile_id` (on `partition`) falls due next, and why; None clears it."""
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
            out.append((profile_id, entry[1], due_ms, entry[2]))
        return out

    def drop_partitions(self, partitions: builtins.set[int]) -> None:  # `set` is a method here
        """Forget profiles of partitions this worker no longer owns."""
        self._due = {k: v for k, v in self._due.items() if v[1] not in partitions}

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def __len__(self) -> int:
        return len(self._due)
