"""Attempts already made are skipped, and nothing that still needs sending is (pure)."""

from __future__ import annotations

from msgspec.structs import replace

from processor.clock import iso
from processor.dispatch.dedupe import Attempts
from processor.records import WebhookDue
from tests.dispatch_helpers import typed_due


def _result(due: WebhookDue, outcome: str, at_ms: int, **extra: object) -> dict:
    return {"type": "delivery", "delivery_id": due.delivery_id, "attempt": due.attempt,
            "outcome": outcome, "finished_at": iso(at_ms), **extra}


def test_an_attempt_made_or_in_flight_is_skipped_and_an_abandoned_one_is_not() -> None:
    """In flight and acknowledged attempts count as made; one ended without an ack does not."""
    attempts, due = Attempts(), typed_due("https://example.com/h")
    assert not attempts.made(due)
    attempts.begin(due)
    assert attempts.made(due)  # a re-emitted copy arriving meanwhile
    attempts.end(due, finished_ms=None)  # abandoned (revoked) or failed: may be made later
    assert not attempts.made(due)
    attempts.begin(due)
    attempts.end(due, finished_ms=1_000)
    assert attempts.made(due) and not attempts.made(replace(due, attempt=2))


def test_a_deferred_copy_is_not_taken_for_its_original_in_flight() -> None:
    """The copy of a deferred try (same attempt, one more deferral) is not skipped while the
    original's acks are still out, and a deferral never counts as an attempt."""
    attempts, due = Attempts(), typed_due("https://example.com/h")
    attempts.begin(due)
    copy = replace(due, deferrals=1)
    assert not attempts.made(copy)
    attempts.end(due, finished_ms=None)  # the deferral: not an attempt
    assert not attempts.made(copy) and not attempts.made(due)


def test_a_replay_is_sent_again_once() -> None:
    """A replayed record (replayed_at after the attempt) is not skipped; its own re-read is."""
    attempts, due = Attempts(), typed_due("https://example.com/h")
    attempts.begin(due)
    attempts.end(due, finished_ms=1_000)
    replay = replace(due, replayed_at=iso(2_000))
    assert attempts.made(due) and not attempts.made(replay)
    attempts.begin(replay)
    attempts.end(replay, finished_ms=2_500)
    assert attempts.made(replay)


def test_learned_results_count_only_when_complete() -> None:
    """From the results topic: terminal results count; deferred ones, and those written with
    a second record (retry_scheduled, dead) whose copy may be missing, do not."""
    attempts = Attempts()
    delivered, failed, retried, dead, deferred = (typed_due("https://example.com/h") for _ in range(5))
    attempts.learn(_result(delivered, "delivered", 1_000))
    attempts.learn(_result(failed, "failed", 1_000))
    attempts.learn(_result(retried, "retry_scheduled", 1_000))
    attempts.learn(_result(dead, "dead", 1_000))
    attempts.learn(_result(deferred, "retry_scheduled", 1_000, deferred=True))
    attempts.learn({"type": "run", "run_id": "run_x"})
    assert [attempts.made(d) for d in (delivered, failed, retried, dead, deferred)] == [
        True, True, False, False, False]


def test_the_oldest_attempts_are_forgotten_first() -> None:
    """Memory is bounded: past the capacity, the oldest attempts are forgotten."""
    attempts = Attempts(capacity=3)
    dues = [typed_due("https://example.com/h") for _ in range(4)]
    for due in dues:
        attempts.begin(due)
        attempts.end(due, finished_ms=1)
    assert len(attempts) == 3 and [attempts.made(d) for d in dues] == [False, True, True, True]
