"""What one HTTP attempt came to, and the request it was made of: plain data (pure).

`delivery` makes these with aiohttp; `outcomes`, `decide` and the tests use them without
importing aiohttp, so the decision and outcome code stays free of the HTTP edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.dispatch.retry_policy import FailureKind

__all__ = ["Attempt", "Prepared"]


# Attempt and Prepared are made once per delivery: plain slotted dataclasses, because a
# frozen one's __init__ sets every field through object.__setattr__ (about 0.7 µs more each).
@dataclass(slots=True)
class Attempt:
    """What one attempt came to; `failure` is None when it was delivered (2xx). Not mutated."""

    failure: FailureKind | None
    http_status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response_excerpt: str | None = None
    sent_at_ms: int | None = None
    finished_at_ms: int | None = None
    retry_after_ms: int | None = None

    @property
    def delivered(self) -> bool:
        return self.failure is None


@dataclass(slots=True)
class Prepared:
    """A request ready to go; `secret_values` are only kept to mask error texts. Not mutated."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)  # may hold resolved secrets
    body: bytes = field(repr=False)
    destination: str = ""
    timeout_ms: int = 0
    secret_values: list[str] = field(default_factory=list, repr=False)
