"""Per-destination work queues, each drained by a bounded number of worker coroutines.

The dispatcher used to start one task per record and make it wait on a per-destination
semaphore: in a py-spy profile of the bench, task creation plus the contended semaphore
(a future, a suspension and a wake-up per record) cost about 9% of all CPU. Here a record
goes straight into its destination's FIFO queue; at most `limit(key)` workers drain that
queue one item after another, so the per-destination concurrency limit holds without a
semaphore, and a busy worker takes the next item without a new task. Workers are started
when a queue has more items than workers and end when it is empty, so nothing idles.

A record for a slow destination only waits in that destination's queue: other
destinations have their own queues and workers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from processor.logs import get_logger

log = get_logger(__name__)

__all__ = ["DestinationPool"]

T = TypeVar("T")


class _Queue(Generic[T]):
    __slots__ = ("items", "workers")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.workers = 0


class DestinationPool(Generic[T]):
    """`submit(key, item)`; `handle(item)` runs in a worker of that key. `handle` decides
    what a failure means; should it raise anyway, the error is logged and the worker goes on."""

    def __init__(self, handle: Callable[[T], Awaitable[None]], limit: Callable[[Hashable], int]) -> None:
        self._handle = handle
        self._limit = limit
        self._queues: dict[Hashable, _Queue[T]] = {}
        self._current: dict[asyncio.Task[None], T] = {}  # what each busy worker handles

    def submit(self, key: Hashable, item: T) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.items.append(item)
        if queue.workers < self._limit(key) and queue.workers < len(queue.items):
            self._start_worker(key, queue)

    def _start_worker(self, key: Hashable, queue: _Queue[T]) -> None:
        queue.workers += 1
        asyncio.get_running_loop().create_task(self._work(key, queue))

    async def _work(self, key: Hashable, queue: _Queue[T]) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            while queue.items:
                item = queue.items.popleft()
                self._current[task] = item
                try:
                    await self._handle(item)
                except Exception:  # a bug in one item must not strand the rest of the queue
                    log.exception("pool_item_failed", key=str(key))
        finally:
            self._current.pop(task, None)
            queue.workers -= 1
            if queue.items:  # this worker was cancelled with work left: replace it
                self._start_worker(key, queue)
            elif queue.workers == 0 and self._queues.get(key) is queue:
                del self._queues[key]

    def __len__(self) -> int:
        """Destinations with a queue now: a queue goes once it is empty and its workers ended."""
        return len(self._queues)

    def queued(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def busy(self) -> int:
        return len(self._current)

    def workers(self, key: Hashable) -> int:
        queue = self._queues.get(key)
        return 0 if queue is None else queue.workers

    async def abandon(self, which: Callable[[T], bool]) -> list[T]:
        """Drop the queued items `which` selects and cancel the workers handling such items
        (waiting until they have stopped); returns the dropped queued items."""
        dropped: list[T] = []
        for queue in self._queues.values():
            keep: deque[T] = deque()
            for item in queue.items:
                (dropped if which(item) else keep).append(item)
            queue.items = keep
        tasks = [task for task, item in self._current.items() if which(item)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return dropped
