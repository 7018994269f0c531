"""The commit stage's bookkeeping: which offset of a partition may be committed (pure).

A fetched record's offset is registered as pending, in offset order; once every output of
the record is acknowledged it is marked done. The committed offset is the one after the last
of the done offsets at the front, so it is the highest below which every record's outcome is
acknowledged: a crash re-delivers (at least once, same webhook-id), never loses.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Pending offsets of one partition, in order; tells the offset that may be committed."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.commit_at: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)

    def advance(self) -> int | None:
        """Drop the done offsets at the front; the offset to commit (None: nothing yet)."""
        while self._pending and self._pending[0] in self._done:
            offset = self._pending.popleft()
            self._done.discard(offset)
            self.commit_at = offset + 1
        return self.commit_at

    def __len__(self) -> int:
        return len(self._pending)
