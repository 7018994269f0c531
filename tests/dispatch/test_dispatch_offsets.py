"""Offset tracking: what may be committed while outcomes are acknowledged out of order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processor.dispatch.offsets import PartitionOffsets


def test_nothing_is_committable_before_the_first_record_is_done() -> None:
    """A later record finishing first does not move the commit position."""
    tracker = PartitionOffsets()
    for offset in (10, 11, 12):
        tracker.add(offset)
    tracker.finish(12)
    assert tracker.advance() is None
    tracker.finish(10)
    assert tracker.advance() == 11


@given(st.integers(min_value=1, max_value=60).flatmap(lambda n: st.permutations(range(n))))
def test_commit_position_is_the_lowest_unfinished_offset(order: list[int]) -> None:
    """Whatever order outcomes are acknowledged in, the commit position never passes an unfinished record."""
    tracker = PartitionOffsets()
    base = 100
    for offset in range(len(order)):
        tracker.add(base + offset)
    finished: set[int] = set()
    for index in order:
        tracker.finish(base + index)
        finished.add(index)
        lowest_open = next((i for i in range(len(order)) if i not in finished), len(order))
        position = tracker.advance()
        assert position == (None if lowest_open == 0 else base + lowest_open)
    assert len(tracker) == 0
