"""Circuit breaker and rate limiter: pure state machines with time passed in."""

from __future__ import annotations

from processor.dispatch.breaker import Breaker, Breakers
from processor.dispatch.ratelimit import RateLimiter


def test_breaker_opens_after_threshold_failures() -> None:
    """Consecutive failures up to the threshold open the circuit; requests are then refused."""
    breaker = Breaker(threshold=3, cooldown_ms=1_000)
    assert [breaker.failure(0) for _ in range(3)] == [False, False, True]
    assert not breaker.allow(500)


def test_success_resets_the_failure_count() -> None:
    """A success in between means the failures were not consecutive."""
    breaker = Breaker(threshold=2, cooldown_ms=1_000)
    breaker.failure(0)
    breaker.success()
    breaker.failure(0)
    assert breaker.allow(0)


def test_half_open_lets_one_probe_and_its_result_decides() -> None:
    """After the cooldown exactly one probe goes out; success closes, failure reopens."""
    breaker = Breaker(threshold=1, cooldown_ms=1_000)
    breaker.failure(0)
    assert breaker.allow(1_000) and not breaker.allow(1_001)
    breaker.failure(1_002)
    assert not breaker.allow(1_500) and breaker.allow(2_002)
    breaker.success()
    assert breaker.allow(2_003) and breaker.allow(2_004)


def test_a_chance_run_of_failures_at_a_mostly_healthy_destination_does_not_open() -> None:
    """Five failures in a row after fifteen successes: most of the window answered, so the
    circuit stays closed; once most of the window fails it opens at the next failure."""
    breaker = Breaker(threshold=5, cooldown_ms=1_000)
    for _ in range(15):
        breaker.success()
    assert not any(breaker.failure(0) for _ in range(5)) and breaker.allow(1)
    opened = [breaker.failure(0) for _ in range(5)]
    assert opened == [False] * 4 + [True]  # 10 of the last 20 failed


def test_breakers_are_per_destination() -> None:
    """One destination's open circuit does not affect another."""
    breakers = Breakers(threshold=1)
    breakers.get("a:443").failure(0)
    assert not breakers.get("a:443").allow(1) and breakers.get("b:443").allow(1)


def test_rate_limiter_spaces_requests() -> None:
    """At 10 requests/s, back-to-back reservations are 100 ms apart."""
    limiter = RateLimiter(rate=10.0)
    waits = [limiter.reserve(now=5.0) for _ in range(3)]
    assert [round(w, 3) for w in waits] == [0.0, 0.1, 0.2]
    assert limiter.reserve(now=10.0) == 0.0
