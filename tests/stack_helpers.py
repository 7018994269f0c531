"""A running Flowhook for tests: loopback receiver, flows applied, processor and dispatcher processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from processor.devtools.receiver import Receiver, start_receiver
from processor.devtools.stack import WorkerProcess, apply_definitions
from processor.kafka import ensure_topics
from processor.settings import Settings


@contextlib.asynccontextmanager
async def worker_stack(
    settings: Settings,
    folder: Path,
    flows: Callable[[int], list[dict[str, Any]]],
    receiver: Receiver,
    env: dict[str, str] | None = None,
) -> AsyncIterator[list[WorkerProcess]]:
    """Start the receiver, apply `flows(receiver_port)`, start both workers; on a clean exit
    check both are still alive; always stop them and the receiver."""
    runner, port = await start_receiver(receiver)
    workers: list[WorkerProcess] = []
    try:
        await ensure_topics(settings)
        await apply_definitions(settings, [(d, "test") for d in flows(port)])
        workers = [WorkerProcess(role, settings, folder / f"{role}.log", env=env or {}).start()
                   for role in ("processor", "dispatcher")]
        yield workers
        for worker in workers:
            assert worker.alive, worker.tail()
    finally:
        for worker in workers:
            worker.stop()
        await runner.cleanup()
