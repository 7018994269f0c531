"""Per-destination request rate limits (a flow's `rate_limit`, requests per second)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

__all__ = ["RateLimiter", "RateLimiters"]


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

    async def acquire(self) -> None:
        wait = self.reserve(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class RateLimiters:
    """One limiter per (destination, rate); a changed rate starts a fresh limiter."""

    by_key: dict[tuple[str, float], RateLimiter] = field(default_factory=dict)

    async def acquire(self, destination: str, rate: float | None) -> None:
        if not rate:
            return
        limiter = self.by_key.get((destination, rate))
        if limiter is None:
            limiter = self.by_key[(destination, rate)] = RateLimiter(rate)
        await limiter.acquire()
