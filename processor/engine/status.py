"""What the parts of one processor worker share: its failure, readiness and partitions.

The batch path and the flow registry record a failure here; the table's recovery sets
`ready` and `owned`; the lifecycle (`engine.app`) reads all three for `/readyz` and to
stop a worker that can no longer make progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerStatus:
    failure: BaseException | None = None  # set once the worker must stop (see Engine._wait)
    ready: bool = False  # the table has been recovered after the last assignment
    owned: set[int] = field(default_factory=set)  # input partitions whose state is recovered here

    def fail(self, exc: BaseException) -> None:
        """Record the first failure; later ones are consequences of it."""
        if self.failure is None:
            self.failure = exc
