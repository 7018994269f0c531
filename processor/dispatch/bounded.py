"""Keeping a per-key state map within a size: forget entries at rest first, then the oldest (pure).

The dispatcher keeps state per destination (circuit breakers, rate limiters) for as long as
it runs; destinations come and go with the flows, so without a bound these maps only grow.
An entry *at rest* is indistinguishable from a new one (a closed breaker with no failures, a
rate limiter whose next slot has passed): forgetting it changes nothing, so those go first.
Only when more than `capacity` entries are all busy are the oldest ones forgotten too (a
forgotten breaker starts counting failures afresh), down to three quarters of the capacity,
so the cost of a prune is spread over many inserts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["make_room", "prune"]

K = TypeVar("K")
V = TypeVar("V")


def prune(entries: dict[K, V], capacity: int, at_rest: Callable[[V], bool]) -> int:
    """Shrink `entries` (insertion-ordered, oldest first) to at most `capacity`; the count dropped."""
    if len(entries) <= capacity:
        return 0
    before = len(entries)
    for key in [key for key, value in entries.items() if at_rest(value)]:
        del entries[key]
    if len(entries) > capacity:
        target = capacity * 3 // 4
        for key in list(entries)[: len(entries) - target]:
            del entries[key]
    return before - len(entries)


def make_room(entries: dict[K, V], capacity: int, at_rest: Callable[[V], bool]) -> int:
    """Before inserting a new entry: prune so that it fits within `capacity`."""
    return prune(entries, capacity - 1, at_rest) if len(entries) >= capacity else 0
