"""The broker watch (processor/outage.py) ends when it is cancelled, whenever the cancel comes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from processor import outage
from processor.settings import Settings


async def test_a_cancel_that_comes_as_a_probe_is_answered_ends_the_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11's `asyncio.wait_for` returns the result and drops the cancel when both come
    in the same step; the watch's loop then went on for good and a dispatcher's shutdown hung."""
    answers: asyncio.Queue[asyncio.Future[list[str]]] = asyncio.Queue()

    class Admin:  # stands in for AIOKafkaAdminClient: each probe waits for the test's answer
        def __init__(self, **_: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        def list_topics(self) -> asyncio.Future[list[str]]:
            answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            answers.put_nowait(answer)
            return answer

        async def close(self) -> None:
            pass

    monkeypatch.setattr(outage, "AIOKafkaAdminClient", Admin)
    watch = asyncio.create_task(outage.BrokerWatch(Settings(), "test").run())
    answer = await asyncio.wait_for(answers.get(), 5)
    answer.set_result([])
    watch.cancel()  # in the same step as the answer, before the watch has run again
    done, _ = await asyncio.wait([watch], timeout=3 * outage.PROBE_EVERY_S)
    if not done:
        watch.cancel()
    assert watch in done and watch.cancelled()
