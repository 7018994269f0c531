"""`--fetchcost-batches`: rising multiples of the control partition's batch size, or a clear error."""

from __future__ import annotations

import click
import pytest

from processor.bench.fetchcost import parse_fetchcost_steps


def test_rising_multiples_of_the_batch_size_are_taken() -> None:
    assert parse_fetchcost_steps("1000, 2000,4000") == (1000, 2000, 4000)


@pytest.mark.parametrize("text", ["1000,1025", "2000,1000", "1000,1000", "0", "many"])
def test_anything_else_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(click.UsageError, match="--fetchcost-batches"):
        parse_fetchcost_steps(text)
