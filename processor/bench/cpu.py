"""CPU time per record, per process of a bench stage: what a bigger machine divides by.

On a shared 2-core machine a stage's rate says as much about the neighbours as about
Flowhook; the CPU seconds each process spent on the stage's records do not. Each process
is read from /proc/<pid>/stat (utime + stime, every thread), once when a stage's
measuring window opens and once when it closes, and the difference is divided by the
records delivered inside the window. The window is the same one the rates use (first to
last output record, or, end to end, from the first produced event after the warm-up to the
last POST), so start-up, imports and group joins are not counted.

The total per record is the pipeline's own cost: workers, broker and receiver. The bench
driver (this process: producing events, reading outputs) is reported beside it, not in it,
because in production that work belongs to the storefront and the analysts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DRIVER = "driver"
CLIENT = "client"  # the raw HTTP stage's aiohttp client (this process), the dispatcher's baseline
# The column order of the CPU table; a stage shows the roles it ran.
ROLES = ("agent", "processor", "dispatcher", CLIENT, "broker", "receiver", DRIVER)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one live process (all its threads); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def sample(pids: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds per role, summed over the role's processes (a gone process counts 0)."""
    return {role: sum(cpu_seconds(pid) or 0.0 for pid in role_pids) for role, role_pids in pids.items()}


@dataclass
class CpuWindow:
    """Opens and closes on a stage's measuring window; `per_record_us` is the result."""

    pids: dict[str, list[int]]
    opened: dict[str, float] = field(default_factory=dict)
    opened_at_ms: int = 0  # wall clock, the one record timestamps use
    spent_s: dict[str, float] = field(default_factory=dict)

    def open(self) -> None:
        self.opened_at_ms = int(time.time() * 1000)
        self.opened = sample(self.pids)

    def close(self) -> dict[str, float]:
        """CPU seconds each role spent since `open` (processes must still be running)."""
        closed = sample(self.pids)
        self.spent_s = {role: max(0.0, closed[role] - self.opened.get(role, 0.0)) for role in closed}
        return self.spent_s

    @property
    def is_open(self) -> bool:
        return bool(self.opened)


def per_record_us(spent_s: Mapping[str, float], records: int) -> dict[str, float]:
    """Microseconds of CPU per record, per role; empty when no record was delivered."""
    if records <= 0:
        return {}
    return {role: seconds * 1e6 / records for role, seconds in spent_s.items()}


def pipeline_total_us(per_record: Mapping[str, float]) -> float | None:
    """The pipeline's CPU per record: every role but the bench driver."""
    own = [us for role, us in per_record.items() if role != DRIVER]
    return sum(own) if own else None


def records_after(stamps: Iterable[int], opened_ms: int) -> int:
    """Output records stamped after the window opened: the ones whose work it measured.

    The window opens when the driver sees the first output record, but by then the worker
    has written a fetch's worth more; their record timestamps (set when they were sent,
    on this machine's clock) say which records were made inside the window.
    """
    return sum(1 for stamp in stamps if stamp > opened_ms)
