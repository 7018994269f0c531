"""Which attempts were already made, so a record read again is not sent again (pure).

A webhook-due record can arrive twice: the processor re-emits a record's outputs when it
reads the record again after a crash or rebalance, and a dispatcher that takes over a
partition re-reads what its predecessor finished after the last commit. Both carry the
same delivery id and attempt number. The dispatcher remembers every attempt whose outcome
the broker acknowledged (and every one in flight) and skips a record for an attempt already
made; a worker taking over partitions first learns the attempts made from the results
topic (`Attempts.learn`, fed by `learn.read_attempts`), which is keyed by delivery id like the
webhooks topic and the retry tiers, so partition p of one holds the results of partition p
of the others.

A replay (`flowhook replay`) sends attempt 1 again on purpose: its record carries
`replayed_at`, and only an attempt made at or after that time counts for it. A deferred try
(circuit open, secret missing) is not an attempt and is never remembered.
"""

from __future__ import annotations

from typing import Any, Final

from processor.clock import parse_iso_ms
from processor.records.types import WebhookDue

__all__ = ["Attempts"]

# Attempts remembered; a repeat comes within seconds to minutes of the original, so the
# oldest are forgotten first. About 25 MiB at the limit.
DEFAULT_CAPACITY: Final = 100_000

Key = tuple[str, int]  # (delivery id, attempt)

# Outcomes written together with a second record (the retry-tier or dead-letter copy), in
# another partition: a crash can leave the result without its copy, so such a result read
# back does not prove the attempt complete; the attempt is made again (a repeat, not a loss).
_WITH_A_COPY = frozenset({"retry_scheduled", "dead"})


def _key(due: WebhookDue) -> Key:
    return due.delivery_id, due.attempt


def _flight_key(due: WebhookDue) -> tuple[str, int, int]:
    """In flight, a deferred try's copy (same attempt, one more deferral) is another record:
    it may be read back before the original's acks are in, and must not be taken for it."""
    return due.delivery_id, due.attempt, due.deferrals or 0


def _replayed_at_ms(due: WebhookDue) -> int | None:
    text = due.replayed_at
    if not text:
        return None
    try:
        return parse_iso_ms(text)
    except (ValueError, OverflowError):
        return None


class Attempts:
    """Attempts made (outcome acknowledged) and in flight, by (delivery id, attempt)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._made: dict[Key, int] = {}  # -> when it finished (epoch ms), insertion-ordered
        self._in_flight: dict[tuple[str, int, int], int] = {}  # -> records of it being handled
        self.skipped = 0

    def made(self, due: WebhookDue) -> bool:
        """True when this record's attempt was already made or is being made."""
        if _flight_key(due) in self._in_flight:
            return True
        finished = self._made.get(_key(due))
        if finished is None:
            return False
        replayed = _replayed_at_ms(due)
        return replayed is None or finished >= replayed

    def begin(self, due: WebhookDue) -> None:
        key = _flight_key(due)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, due: WebhookDue, *, finished_ms: int | None) -> None:
        """The record is done: `finished_ms` when its attempt was made and acknowledged,
        None when it was abandoned, failed or only deferred (so it may be made later)."""
        flight = _flight_key(due)
        left = self._in_flight.get(flight, 0) - 1
        if left > 0:
            self._in_flight[flight] = left
        else:
            self._in_flight.pop(flight, None)
        if finished_ms is not None:
            self._remember(_key(due), finished_ms)

    def learn(self, result: dict[str, Any]) -> None:
        """A result record read from the results topic (others are ignored)."""
        if result.get("type") != "delivery" or result.get("deferred"):
            return
        if result.get("outcome") in _WITH_A_COPY:
            return  # its retry or dead-letter copy may not have been written: make it again
        try:
            key = (str(result["delivery_id"]), int(result["attempt"]))
            finished = parse_iso_ms(result["finished_at"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return
        if finished > self._made.get(key, -1):
            self._remember(key, finished)

    def _remember(self, key: Key, finished_ms: int) -> None:
        self._made.pop(key, None)  # move to the young end
        self._made[key] = finished_ms
        while len(self._made) > self.capacity:
            del self._made[next(iter(self._made))]

    def __len__(self) -> int:
        return len(self._made)
