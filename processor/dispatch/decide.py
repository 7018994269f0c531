"""The decide and outcome stages of one webhook-due record, around its request (pure).

Before a request: records not to be sent (held, invalid) and retries past `max_age` are
settled without one; `prepare` builds the request or refuses it (blocked, invalid); an unset
secret or an open circuit defers the try (not an attempt, SPEC §3). After the request: the
breaker learns what it came to, and `outcomes` makes the records to produce. No HTTP or
Kafka client here: the worker awaits the rate limit and the request between these calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from processor.dispatch import outcomes
from processor.dispatch.attempt import Attempt, Prepared
from processor.dispatch.breaker import Breakers
from processor.dispatch.deferrals import Deferrals
from processor.dispatch.outcomes import Output
from processor.dispatch.request import RequestRefused, prepare
from processor.dispatch.secrets import SecretMissing
from processor.logs import get_logger
from processor.records.types import WebhookDue
from processor.settings import Topics

log = get_logger(__name__)

__all__ = ["Decider"]


def _ignore(_name: str) -> None:
    return None


@dataclass
class Decider:
    """The decisions of one dispatcher: its topics, address policy, breakers and deferrals."""

    topics: Topics
    allow_http: bool
    allow_networks: Iterable[Any]
    breakers: Breakers
    deferrals: Deferrals
    rng: random.Random
    on_secret_missing: Callable[[str], None] = _ignore  # counted by the secret's NAME

    def __post_init__(self) -> None:
        self.allow_networks = tuple(self.allow_networks)

    def settled(self, due: WebhookDue, now: int) -> list[Output] | None:
        """The outputs of a record that needs no request (held, invalid, expired), else None."""
        return outcomes.for_mode(self.topics, due) or outcomes.expired(self.topics, due, now)

    def request(self, due: WebhookDue, now: int) -> Prepared | list[Output]:
        """The request to make, or the outputs instead (refused, or deferred for a secret)."""
        try:
            return prepare(due, allow_http=self.allow_http, allow_networks=self.allow_networks)
        except RequestRefused as refused:
            return outcomes.after_attempt(self.topics, due, refused.attempt, self.rng)
        except SecretMissing as missing:
            self.on_secret_missing(missing.name)
            return self._defer(due, f"secret {missing.name} is not set", self.deferrals.secret_wait_ms(due),
                               now, key=f"secret:{missing.name}")

    def gate(self, due: WebhookDue, destination: str, now: int) -> list[Output] | None:
        """None when the destination's circuit lets the request out now (claiming the probe
        when half-open), else the outputs of the deferred try."""
        breaker = self.breakers.get(destination)
        if breaker.allow(now):
            return None
        wait = self.deferrals.breaker_wait_ms(breaker, now)
        return self._defer(due, f"circuit open for {destination}", wait, now, key="circuit_open")

    def abandoned(self, destination: str) -> None:
        """A request given up before its answer: an abandoned probe must not keep the circuit
        open for good."""
        self.breakers.get(destination).probing = False

    def outcome(self, due: WebhookDue, destination: str, attempt: Attempt, now: int) -> list[Output]:
        """After the request: the breaker learns of it; the records to produce."""
        self._update_breaker(destination, attempt, now)
        if attempt.failure is not None:
            log.debug("attempt_failed", delivery_id=due.delivery_id, error=attempt.error)
        return outcomes.after_attempt(self.topics, due, attempt, self.rng)

    def crashed(self, due: WebhookDue, exc: Exception) -> list[Output]:
        """A bug must not turn one record into a crash loop (poison pill): `invalid`."""
        log.exception("delivery_crashed", delivery_id=due.delivery_id)
        error = f"internal error: {type(exc).__name__}"  # the type only: a message might hold a secret
        return [outcomes.result_output(self.topics, due, "invalid", error=error)]

    def _defer(self, due: WebhookDue, reason: str, wait_ms: int, now: int, *, key: str) -> list[Output]:
        """A try not made: counted and logged (by secret name, never value), then re-queued."""
        self.deferrals.count(key, due.delivery_id, reason)
        return outcomes.deferred(self.topics, due, reason=reason, wait_ms=wait_ms, now=now)

    def _update_breaker(self, destination: str, attempt: Attempt, now: int) -> None:
        breaker = self.breakers.get(destination)
        if attempt.failure is None or not attempt.failure.trips_breaker:
            if breaker.is_open:
                log.info("circuit_closed", destination=destination)
            breaker.success()
        elif breaker.failure(now):
            log.warning("circuit_opened", destination=destination, failures=breaker.failures)
