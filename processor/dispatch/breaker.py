"""A circuit breaker per destination (host:port); pure, time passed in.

closed --(`threshold` failures in a row)--> open --(`cooldown_ms`)--> half-open:
one probe request is let through; its success closes the circuit, its failure opens it
again. While open, deliveries skip the request and go straight to a retry tier.
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
    failures: int = 0
    opened_at_ms: int | None = None
    probing: bool = False

    @property
    def is_open(self) -> bool:
        return self.opened_at_ms is not None

    @property
    def at_rest(self) -> bool:
        """Closed with no failure counted: the same as a breaker made afresh."""
        return self.opened_at_ms is None and self.failures == 0 and not self.probing

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
        self.failures = 0
        self.opened_at_ms = None
        self.probing = False

    def failure(self, now_ms: int) -> bool:
        """A request failed in a way that says the destination is down; True if it opened."""
        self.failures += 1
        was_open = self.is_open
        if self.probing or self.failures >= self.threshold:
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
