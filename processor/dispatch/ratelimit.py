"""Per-destination request rate limits (a flow's `rate_limit`, requests per second)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from processor.dispatch.bounded import make_room

__all__ = ["RateLimiter", "RateLimiters"]

# Limiters kept; beyond it, those whose next slot has passed are forgotten (a new one is the
# same), then the oldest (see `bounded`).
DEFAULT_CAPACITY = 10_000


@dataclass
class RateLimiter:
    """Spaces requests 1/rate seconds apart; each caller reserves the next free slot."""

    rate: float
    next_slot: float = 0.0

    def reserve(self, now: float) -> float:
        """Reserve a slot; the seconds to wait before using it."""
        slot = max(now, self.next_slot)
        self.next_slot = slot + 1.0 / self.rate
        return slot - now

    def idle(self, now: float) -> bool:
        """No slot reserved beyond `now`: the same as a limiter made afresh."""
        return self.next_slot <= now

    async def acquire(self) -> None:
        wait = self.reserve(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class RateLimiters:
    """One limiter per (destination, rate); a changed rate starts a fresh limiter."""

    by_key: dict[tuple[str, float], RateLimiter] = field(default_factory=dict)
    capacity: int = DEFAULT_CAPACITY

    def get(self, destination: str, rate: float, now: float) -> RateLimiter:
        limiter = self.by_key.get((destination, rate))
        if limiter is None:
            make_room(self.by_key, self.capacity, lambda other: other.idle(now))
            limiter = self.by_key[(destination, rate)] = RateLimiter(rate)
        return limiter

    async def acquire(self, destination: str, rate: float | None) -> None:
        if not rate:
            return
        await self.get(destination, rate, time.monotonic()).acquire()
