"""A circuit breaker per destination (host:port); pure, time passed in.

closed --(`threshold` failures in a row, and at least half of the last 4 * `threshold`
requests failed)--> open --(`cooldown_ms`)--> half-open: one probe request is let through;
its success closes the circuit, its failure opens it again. While open, deliveries skip the
request and go straight to a retry tier.

Why the second condition: at hundreds of requests a second, a destination that answers
most requests still fails five in a row now and then by chance (at 11% failures, about once
every 70,000 requests; sooner when timeouts of requests sent together end together), and an
open circuit defers *every* delivery to it for `cooldown_ms`: in the soak that put about 1%
of a mostly healthy destination's first tries seconds late. A destination that is down
fails every request, so it still opens after `threshold` failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.dispatch.bounded import make_room

DEFAULT_THRESHOLD = 5
DEFAULT_COOLDOWN_MS = 5_000
# Destinations whose breakers are kept; beyond it, closed breakers without failures are
# forgotten first (a new one is the same), then the oldest (see `bounded`).
DEFAULT_CAPACITY = 10_000

__all__ = ["Breaker", "Breakers"]


@dataclass
class Breaker:
    """The state of one destination's circuit."""

    threshold: int = DEFAULT_THRESHOLD
    cooldown_ms: int = DEFAULT_COOLDOWN_MS
    failures: int = 0  # in a row
    opened_at_ms: int | None = None
    probing: bool = False
    recent: int = 0  # the last `seen` outcomes as bits, newest lowest: 1 = failed
    seen: int = 0  # requests counted in `recent`, at most the window (4 * threshold)

    @property
    def is_open(self) -> bool:
        return self.opened_at_ms is not None

    @property
    def at_rest(self) -> bool:
        """Closed with no failure counted: the same as a breaker made afresh."""
        return self.opened_at_ms is None and self.recent == 0 and not self.probing

    def _count(self, failed: int) -> None:
        window = 4 * self.threshold
        self.recent = ((self.recent << 1) | failed) & ((1 << window) - 1)
        if self.seen < window:
            self.seen += 1

    @property
    def mostly_failing(self) -> bool:
        """At least half of the requests in the window failed."""
        return 2 * self.recent.bit_count() >= self.seen

    def allow(self, now_ms: int) -> bool:
        """May a request go out now? (Claims the single probe slot when half-open.)"""
        if self.opened_at_ms is None:
            return True
        if self.probing or now_ms - self.opened_at_ms < self.cooldown_ms:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        """A request got a response that says the destination is up."""
        if self.recent == 0 and self.opened_at_ms is None and not self.probing:
            # The common case: nothing failed lately, so only the count of requests seen moves.
            if self.seen < 4 * self.threshold:
                self.seen += 1
            return
        self.failures = 0
        self.opened_at_ms = None
        self.probing = False
        self._count(0)

    def failure(self, now_ms: int) -> bool:
        """A request failed in a way that says the destination is down; True if it opened."""
        self.failures += 1
        self._count(1)
        was_open = self.is_open
        if self.probing or (self.failures >= self.threshold and self.mostly_failing):
            self.opened_at_ms = now_ms
            self.probing = False
        return self.is_open and not was_open


@dataclass
class Breakers:
    """One breaker per destination key, created on first use; at most `capacity` kept."""

    threshold: int = DEFAULT_THRESHOLD
    cooldown_ms: int = DEFAULT_COOLDOWN_MS
    by_key: dict[str, Breaker] = field(default_factory=dict)
    capacity: int = DEFAULT_CAPACITY

    def get(self, key: str) -> Breaker:
        breaker = self.by_key.get(key)
        if breaker is None:
            make_room(self.by_key, self.capacity, _at_rest)
            breaker = self.by_key[key] = Breaker(self.threshold, self.cooldown_ms)
        return breaker


def _at_rest(breaker: Breaker) -> bool:
    return breaker.at_rest
