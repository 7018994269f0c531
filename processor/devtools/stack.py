"""A whole Flowhook on one machine: embedded broker, worker processes, local receiver.

`demo`, `dev`, `bench` and the end-to-end tests all start Flowhook through this module,
so there is one way to run the workers as real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.errors import InputError
from processor.flows.loader import check_definition, parse_text
from processor.logs import get_logger
from processor.ops.publish import apply
from processor.settings import Settings

log = get_logger(__name__)


@dataclass
class WorkerProcess:
    """A `flowhook processor` or `flowhook dispatcher` child process with its own log file."""

    role: str
    settings: Settings
    log_path: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() at start

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.as_env(), **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "processor", self.role, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop children in order
            )
        self.started_at = time.monotonic()
        log.debug("worker_started", role=self.role, pid=self.process.pid, log=str(self.log_path))
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash that failure tests simulate."""
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
        if self.process is None:
            return None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("worker_killed_after_grace", role=self.role, grace_s=grace_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll a zero-argument callable until it returns true or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


async def apply_definitions(settings: Settings, definitions: list[tuple[dict[str, Any], str]]) -> list[str]:
    """Check every (definition, source) and publish the changed ones; InputError lists all problems."""
    checked = [check_definition(d, source=s, allow_http=settings.allow_http) for d, s in definitions]
    problems = [problem for c in checked for problem in c.problems]
    if problems:
        raise InputError(problems)
    return [f"{change.flow_id} v{change.version}" for change in await apply(settings, checked)]


def read_definition(path: Path) -> dict[str, Any]:
    """A flow file (YAML or JSON) as data, e.g. to adjust it before applying."""
    data, _lines = parse_text(path.read_text(encoding="utf-8"), json_file=path.suffix == ".json")
    return data
