"""`flowhook dev` in the terminal: workers supervised, ready when they say so, deliveries and
worker errors shown as they happen.

- Each worker gets a metrics port of its own; dev is ready (`dev_ready`) once every worker's
  `/readyz` answers 200, i.e. joined, partitions assigned, state recovered.
- Workers log JSON to their files; dev shows their warnings and errors (flows they refuse
  included) prefixed with the worker's role.
- Every delivery result is shown as one line; above `SHOWN_PER_SECOND` a second, the rest
  are summed up once a second.
- A worker that exits is reported with the end of its log and started again, at most
  `MAX_RESTARTS` times; then dev stops with exit code 1.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from processor.devtools.broker import free_port
from processor.devtools.stack import WorkerProcess
from processor.kafka import read_records
from processor.logs import get_logger
from processor.ops.readiness import wait_ready
from processor.settings import Settings

log = get_logger("flowhook.dev")

__all__ = ["Supervisor"]

MAX_RESTARTS: Final = 3
READY_TIMEOUT_S: Final = 120.0
SHOWN_PER_SECOND: Final = 20
SHOWN_LEVELS: Final = frozenset({"warning", "error", "critical"})
ROLES: Final = ("processor", "dispatcher")


@dataclass
class Watched:
    """One worker process, where its log has been read up to, and how often it was restarted."""

    process: WorkerProcess
    port: int
    read_to: int = 0
    restarts: int = 0

    @property
    def role(self) -> str:
        return self.process.role


@dataclass
class Supervisor:
    """Starts, watches and restarts the dev workers; shows what happens."""

    settings: Settings
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[Watched] = field(default_factory=list)
    failed: str | None = None

    def start(self) -> None:
        for role in ROLES:
            port = free_port()
            env = {**self.env, "FLOWHOOK_METRICS_PORT": str(port), "FLOWHOOK_LOG_FORMAT": "json"}
            worker = WorkerProcess(role, self.settings, self.workdir / f"{role}.log", env=env)
            self.workers.append(Watched(worker, port, read_to=_size(worker.log_path)))
            self._start(self.workers[-1])

    def _start(self, watched: Watched) -> None:
        watched.process.start()
        assert watched.process.process is not None
        log.info("worker_started", role=watched.role, pid=watched.process.process.pid,
                 metrics=f"http://127.0.0.1:{watched.port}/metrics")

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        """Until every worker's /readyz answers 200 (restarting any that dies meanwhile)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not stop.is_set() and self.failed is None:
            if await wait_ready([w.port for w in self.workers], 1.0, self._all_alive):
                return True
            self.check_workers()
        return False

    def _all_alive(self) -> bool:
        return all(w.process.alive for w in self.workers)

    def check_workers(self) -> None:
        """Report and restart a worker that exited; give up after MAX_RESTARTS."""
        for watched in self.workers:
            if watched.process.alive:
                continue
            self.show_logs()
            code = watched.process.process.returncode if watched.process.process else None
            log.error("worker_died", role=watched.role, exit_code=code, log=str(watched.process.log_path),
                      last_lines=watched.process.tail(5))
            if watched.restarts >= MAX_RESTARTS:
                self.failed = f"the {watched.role} died {watched.restarts + 1} times"
                return
            watched.restarts += 1
            log.warning("worker_restarting", role=watched.role, restart=watched.restarts, of=MAX_RESTARTS)
            self._start(watched)

    def show_logs(self) -> None:
        """The workers' warnings and errors since last time, one line each."""
        for watched in self.workers:
            for line in _new_lines(watched):
                _show_worker_line(watched.role, line)

    def stop(self) -> None:
        for watched in self.workers:
            watched.process.stop()


async def watch(supervisor: Supervisor, stop: asyncio.Event) -> None:
    """Check workers and their logs until `stop` (or the supervisor gives up)."""
    while not stop.is_set():
        supervisor.show_logs()
        supervisor.check_workers()
        if supervisor.failed is not None:
            log.error("dev_stopping", reason=supervisor.failed)
            stop.set()
            return
        await asyncio.sleep(0.3)


async def show_deliveries(settings: Settings, stop: asyncio.Event) -> None:
    """One line per delivery result, up to SHOWN_PER_SECOND a second; then a sum per second."""
    window = _Window()
    async for record in read_records(settings, settings.topics.results, follow=True, stop=stop.is_set):
        value = _json(record.value)
        if value is None or value.get("type") != "delivery":
            continue
        window.add(value)
    window.flush()


@dataclass
class _Window:
    started: float = field(default_factory=time.monotonic)
    shown: int = 0
    hidden: Counter[str] = field(default_factory=Counter)

    def add(self, value: dict[str, Any]) -> None:
        if time.monotonic() - self.started >= 1.0:
            self.flush()
        if self.shown < SHOWN_PER_SECOND:
            self.shown += 1
            log.info("delivery", outcome=value.get("outcome"), flow=value.get("flow_id"),
                     step=value.get("step_id"), delivery_id=value.get("delivery_id"),
                     attempt=value.get("attempt"), http_status=value.get("http_status"),
                     latency_ms=value.get("latency_ms"), error=value.get("error"))
        else:
            self.hidden[str(value.get("outcome"))] += 1

    def flush(self) -> None:
        if self.hidden:
            log.info("deliveries_not_shown", **dict(self.hidden))
        self.started, self.shown, self.hidden = time.monotonic(), 0, Counter()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _new_lines(watched: Watched) -> list[bytes]:
    try:
        with watched.process.log_path.open("rb") as handle:
            handle.seek(watched.read_to)
            data = handle.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next look
    watched.read_to += end
    return data[:end].splitlines()


def _json(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _show_worker_line(role: str, raw: bytes) -> None:
    value = _json(raw)
    if value is None:  # not one of our JSON lines (e.g. a crash before logging was set up)
        if raw.strip():
            log.warning("worker_output", role=role, line=raw.decode(errors="replace")[:500])
        return
    level = str(value.pop("level", "info"))
    if level not in SHOWN_LEVELS:
        return
    event = str(value.pop("event", ""))
    value.pop("timestamp", None)
    exception = value.pop("exception", None)
    if exception:
        value["exception"] = "; ".join(f"{e.get('exc_type')}: {e.get('exc_value')}" for e in exception)
    getattr(log, "error" if level == "critical" else level)(f"{role}: {event}", **value)
