"""`flowhook bench`: throughput and latency of each stage, next to a same-run baseline.

Timings on a shared machine drift from run to run, so every figure is reported beside a
baseline measured in the same run: a plain aiohttp client against the same receiver (the
HTTP ceiling of one Python process here) and a plain Faust agent (one table update and one
send per event) on the same broker. Stages, one after another, each on fresh topics:

1. raw HTTP: N POSTs of the webhook body's size, at the same concurrency;
2. plain agent: N events in, N records out (the processor's baseline);
3. processor: N events in, N webhook-due records out;
4. dispatcher: N pre-produced webhook-due records, N `delivered` outcomes;
5. end to end: N events in, N POSTs received; latency from produce to receipt; peak RSS;
6. half rate: the same workers, N more events produced at half the end-to-end rate, for
   the latency of a pipeline that keeps up (a rate at its maximum measures queueing).

Stage rates are measured between the first and last output record's timestamps, so worker
start-up and group joins are not counted. Every stage also reports the CPU each of its
processes spent per record in the same window (processor.bench.cpu).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from processor import records
from processor.bench.agent import OUT_SUFFIX
from processor.bench.cpu import (
    CLIENT,
    DRIVER,
    CpuWindow,
    cpu_seconds,
    per_record_us,
    pipeline_total_us,
    records_after,
)
from processor.clock import iso, now_ms
from processor.devtools.stack import WorkerProcess, apply_definitions
from processor.kafka import ensure_topics, make_producer, read_records
from processor.ops.summary import percentile
from processor.settings import Settings

BENCH_METRIC = "Bench Order"
STAGES = ("raw", "agent", "processor", "dispatcher", "e2e", "half")
# "state" (a large RocksDB state), "scale" (1, 2, 4 workers of each kind on 8 and 16
# partitions), "soak" (minutes against failing receivers) and "fetchcost" (the broker's
# CPU per fetch as a partition grows) run only when asked for
ALL_STAGES = (*STAGES, "state", "scale", "soak", "fetchcost")


@dataclass(frozen=True)
class BenchConfig:
    events: int = 20_000
    profiles: int = 5_000
    concurrency: int = 256
    brokers: str | None = None
    rate: float | None = None  # end-to-end produce rate; None: as fast as possible
    store: str = "memory"
    partitions: int = 8
    stages: tuple[str, ...] = STAGES
    stage_timeout_s: float = 300.0
    state_profiles: int = 1_000_000
    soak_events: int = 100_000
    soak_seconds: float = 300.0
    broker: str = "embedded"  # or "kafka" (one Apache Kafka node); ignored with `brokers`
    scale_workers: tuple[int, ...] = (1, 2, 4)  # processors (and as many dispatchers) per scale run
    scale_partitions: tuple[int, ...] = (8, 16)
    fetchcost_batches: tuple[int, ...] = (1_000, 2_000, 4_000, 8_000)  # stored batches per reading


@dataclass
class StageResult:
    name: str
    count: int = 0
    seconds: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    note: str = ""
    # CPU seconds the broker process(es) used over the whole stage, start-up included (on a
    # stage's first result); `cpu_s` has the broker's share of the measuring window.
    broker_cpu_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per role in the measuring window
    cpu_records: int = 0  # records delivered inside that window
    phases_s: dict[str, float | None] = field(default_factory=dict)  # restart: seconds to each phase

    @property
    def rate(self) -> float | None:
        return self.count / self.seconds if self.seconds else None

    @property
    def cpu_us(self) -> dict[str, float]:
        return per_record_us(self.cpu_s, self.cpu_records)

    def add_cpu(self, window: CpuWindow, records: int) -> StageResult:
        self.cpu_s, self.cpu_records = dict(window.spent_s), records
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "count": self.count,
            "seconds": self.seconds,
            "per_second": self.rate,
            "p50_ms": percentile(self.latencies_ms, 0.50),
            "p95_ms": percentile(self.latencies_ms, 0.95),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "peak_rss_mb": self.rss_mb,
            "broker_cpu_s": self.broker_cpu_s,
            "cpu_us_per_record": self.cpu_us,
            "cpu_us_total": pipeline_total_us(self.cpu_us),
            "cpu_records": self.cpu_records,
            **({"phases_s": self.phases_s} if self.phases_s else {}),
            "note": self.note,
        }


class Bench:
    """One bench run: a broker, a receiver process, and the stages in order."""

    def __init__(self, config: BenchConfig, brokers: str, workdir: Path, receiver_port: int,
                 broker_pids: tuple[int, ...] = (), receiver_pid: int | None = None) -> None:
        self.config = config
        self.brokers = brokers
        self.broker_pids = broker_pids
        self.receiver_pid = receiver_pid
        self.workdir = workdir
        self.receiver_port = receiver_port
        self.receiver_url = f"http://127.0.0.1:{receiver_port}"

    def settings(self) -> Settings:
        """Fresh topics for each stage: stages never read each other's records."""
        return Settings(
            brokers=self.brokers,
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
            partitions=self.config.partitions,
            allow_http=True,
            allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
            data_dir=self.workdir / uuid.uuid4().hex[:8],
            store=self.config.store,
            log_level="warning",
            session_timeout_ms=6_000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=6_000,
        )

    def worker(self, role: str, settings: Settings, *args: str, name: str = "") -> WorkerProcess:
        log = self.workdir / f"{settings.topic_prefix}{name or role}.log"
        return WorkerProcess(role, settings, log, args=args)

    def cpu_window(self, workers: dict[str, list[Any]], *, receiver: bool = False,
                   driver: str = DRIVER, broker: bool = True) -> CpuWindow:
        """A CPU window over the stage's processes: the workers by role, the broker, the
        receiver (where the stage sends HTTP) and this process, as the driver or (raw HTTP,
        which uses no broker) as the measured HTTP client."""
        pids: dict[str, list[int]] = {role: [_pid(w) for w in ws] for role, ws in workers.items()}
        if broker and self.broker_pids:
            pids["broker"] = list(self.broker_pids)
        if receiver and self.receiver_pid:
            pids["receiver"] = [self.receiver_pid]
        pids[driver] = [os.getpid()]
        return CpuWindow(pids)

    # -- payloads ---------------------------------------------------------------------------

    def event(self, index: int, run: str, timed: bool = True) -> dict[str, Any]:
        """A bench event; `timed` ones carry their produce time, so the receiver counts them."""
        profile = index % self.config.profiles
        event: dict[str, Any] = {
            "id": f"evt_{run}_{index}",
            "metric": BENCH_METRIC,
            "time": iso(now_ms()),
            "profile": {"id": f"p_{profile}", "email": f"bench{profile}@example.invalid",
                        "first_name": "Bench", "properties": {"address": f"{profile} Main St"}},
            "properties": {"OrderId": str(100000 + index), "$value": 129.5,
                           "Items": [{"sku": "A1", "qty": 2}, {"sku": "B7", "qty": 1}]},
        }
        if timed:
            event["properties"]["bench_sent_ms"] = now_ms()
        return event

    def flow(self) -> dict[str, Any]:
        return {
            "id": "bench",
            "name": "bench",
            "status": "live",
            "trigger": {"metric": BENCH_METRIC},
            "reentry": {"mode": "always"},
            "steps": [{"webhook": {
                "id": "hook",
                "url": f"{self.receiver_url}/bench",
                "retry": ["1s", "2s"],
                "body": {"order_id": "{{ event.OrderId }}", "email": "{{ person.email }}",
                         "name": "{{ person.first_name }}", "address": "{{ person.address }}",
                         "items": "{{ event.Items }}", "total": "{{ event|lookup:'$value' }}",
                         "bench_sent_ms": "{{ event.bench_sent_ms }}"},
            }}],
        }

    def sample_body(self) -> bytes:
        event = self.event(0, "raw")
        return orjson.dumps({"order_id": "100000", "email": event["profile"]["email"], "name": "Bench",
                             "address": "0 Main St", "items": event["properties"]["Items"],
                             "total": 129.5, "bench_sent_ms": now_ms()})

    def due_record(self, index: int) -> dict[str, Any]:
        run_id = records.run_id("bench", f"p_{index}", f"evt_{index}")
        return records.as_dict(records.WebhookDue(
            delivery_id=records.delivery_id("bench", run_id, "hook"),
            flow_id="bench", flow_version=1, flow_name="bench", step_id="hook",
            run_id=run_id, profile_id=f"p_{index % self.config.profiles}",
            event_id=f"evt_{index}", metric=BENCH_METRIC, mode="send", error=None,
            request=records.Request(method="POST", url=f"{self.receiver_url}/bench", headers={},
                                    secret_headers={}, body=self.sample_body().decode(), signing_secrets=[]),
            options=records.Options(timeout_ms=10_000, retry_ms=[1000, 2000], max_age_ms=3_600_000,
                                    rate_limit=None),
            due_at=iso(now_ms()), created_at=iso(now_ms()),
            attempt=1, not_before=None, first_attempt_at=None,
        ))

    # -- stages -----------------------------------------------------------------------------

    async def raw_http(self) -> StageResult:
        body = self.sample_body()
        n, concurrency = self.config.events, self.config.concurrency
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        remaining = iter(range(n))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client() -> None:
                for _ in remaining:
                    async with session.post(f"{self.receiver_url}/raw", data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                        await response.read()

            window = self.cpu_window({}, receiver=True, driver=CLIENT, broker=False)
            window.open()
            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            window.close()
        return StageResult("raw HTTP (aiohttp client)", n, elapsed).add_cpu(window, n)

    async def plain_agent(self) -> StageResult:
        settings = self.settings()
        # Brokers that do not create topics on demand (Apache Kafka here) need the output too.
        out = settings.topics.name(OUT_SUFFIX)
        await ensure_topics(settings, extra={out: (settings.partitions, {})})
        await self.produce_events(settings, "agent")
        worker = WorkerProcess("bench-agent", settings, self.workdir / "agent.log")
        # --without-web: Faust's worker command would serve on 0.0.0.0:6066, which another
        # run on the machine may hold (the agent then dies at start) and is not loopback.
        worker_cmd = [sys.executable, "-m", "processor.bench.agent", "worker", "-l", "warn", "--without-web"]
        return await self._count_outputs(
            "plain Faust agent (baseline)", settings, out,
            lambda: _popen(worker, worker_cmd), role="agent",
        )

    async def processor(self) -> StageResult:
        settings = self.settings()
        await self.prepare_flows(settings)
        await self.produce_events(settings, "proc")
        worker = self.worker("processor", settings)
        return await self._count_outputs("processor", settings, settings.topics.webhooks, worker.start,
                                         role="processor")

    async def dispatcher(self) -> StageResult:
        settings = self.settings()
        await ensure_topics(settings)
        producer = make_producer(settings)
        await producer.start()
        try:
            futures = [await producer.send(settings.topics.webhooks, orjson.dumps(rec),
                                           key=rec["delivery_id"].encode())
                       for rec in (self.due_record(i) for i in range(self.config.events))]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        # The same concurrency as the raw HTTP baseline: one destination, so the dispatcher's
        # per-destination limit (default 32) would otherwise cap it at a fraction of it.
        limit = str(self.config.concurrency)
        worker = self.worker("dispatcher", settings, "--concurrency", limit, "--per-destination", limit)
        return await self._count_outputs("dispatcher", settings, settings.topics.results, worker.start,
                                         accept=lambda v: b'"outcome":"delivered"' in v, role="dispatcher")

    async def end_to_end(self, *, full: bool = True, half: bool = True) -> list[StageResult]:
        """End to end as fast as possible (`full`), then on the same workers at half the rate
        it reached (`half`; at `--rate`'s half when the full pass was not asked for)."""
        settings = self.settings()
        await self.prepare_flows(settings)
        workers = [self.worker("processor", settings).start(), self.worker("dispatcher", settings).start()]
        results: list[StageResult] = []
        try:
            await self.warm_up(settings)
            rate = self.config.rate
            if full:
                results.append(await self.e2e_pass(settings, workers, "end to end", "e2e", rate))
                rate = results[-1].rate
            if half and rate:
                results.append(await self.e2e_pass(settings, workers, "end to end at half that rate",
                                                   "half", rate / 2))
            return results
        finally:
            stop_all(workers)

    async def e2e_pass(self, settings: Settings, workers: list[WorkerProcess], name: str, run: str,
                       rate: float | None) -> StageResult:
        """N events through running workers; latency from produce to receipt, CPU per delivery."""
        await self.receiver("POST", "__reset")
        window = self.cpu_window(_by_role(workers), receiver=True)
        window.open()
        started = time.perf_counter()
        await self.produce_events(settings, run, rate=rate)
        stats = await self.wait_received(self.config.events, workers)
        elapsed = time.perf_counter() - started
        window.close()
        latencies = (await self.receiver("GET", "__stats?latencies=1"))["latencies_ms"]
        result = StageResult(name, stats["bench"], elapsed, latencies).add_cpu(window, stats["bench"])
        result.rss_mb = {w.role: max(_peak_rss_mb(x) for x in workers if x.role == w.role) for w in workers}
        notes = [f"produced at {rate:.0f}/s"] if rate else []
        if stats["total"] > stats["bench"]:
            notes.append(f"{stats['total'] - stats['bench']} repeated or warm-up requests")
        result.note = "; ".join(notes)
        return result

    # -- helpers ----------------------------------------------------------------------------

    async def prepare_flows(self, settings: Settings) -> None:
        await ensure_topics(settings)
        await apply_definitions(settings, [(self.flow(), "bench")])

    async def produce_events(self, settings: Settings, run: str, rate: float | None = None) -> None:
        producer = make_producer(settings)
        await producer.start()
        started = time.perf_counter()
        try:
            futures = []
            for index in range(self.config.events):
                event = self.event(index, run)
                futures.append(await producer.send(settings.topics.events, orjson.dumps(event),
                                                   key=event["profile"]["id"].encode()))
                if rate and (ahead := (index + 1) / rate - (time.perf_counter() - started)) > 0:
                    await asyncio.sleep(ahead)
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def send_untimed(self, settings: Settings, run: str) -> None:
        """One bench event that the receiver does not count (warm-up, readiness probe)."""
        producer = make_producer(settings)
        await producer.start()
        try:
            event = orjson.dumps(self.event(0, run, timed=False))
            await producer.send_and_wait(settings.topics.events, event, key=b"p_0")
        finally:
            await producer.stop()

    async def warm_up(self, settings: Settings) -> None:
        """One event through the whole path, so group joins are not in the measurement."""
        await self.send_untimed(settings, "warm")
        deadline = time.monotonic() + 120
        # Polling another process over HTTP: there is no event to wait on.
        while time.monotonic() < deadline and (await self.receiver("GET", "__stats"))["total"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    async def wait_received(self, n: int, workers: list[WorkerProcess]) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.stage_timeout_s
        stats = await self.receiver("GET", "__stats")
        while stats["bench"] < n and time.monotonic() < deadline and all(w.alive for w in workers):
            await asyncio.sleep(0.1)
            stats = await self.receiver("GET", "__stats")
        return stats

    async def receiver(self, method: str, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.request(
            method, f"{self.receiver_url}/{path}"
        ) as response:
            return orjson.loads(await response.read())

    async def _count_outputs(
        self,
        name: str,
        settings: Settings,
        topic: str,
        start: Callable[[], Any],
        accept: Callable[[bytes], bool] = lambda _v: True,
        *,
        role: str,
    ) -> StageResult:
        process = start()
        window = self.cpu_window({role: [process]}, receiver=role == "dispatcher")
        try:
            stamps = await count_records(settings, topic, self.config.events,
                                         time.monotonic() + self.config.stage_timeout_s,
                                         accept=accept, alive=lambda: _alive(process), window=window)
        finally:
            _stop(process)
        return stage_from_stamps(name, stamps, self.config.events, window)


async def count_records(
    settings: Settings,
    topic: str,
    expected: int,
    deadline: float,
    *,
    accept: Callable[[bytes], bool] = lambda _v: True,
    alive: Callable[[], bool] = lambda: True,
    window: CpuWindow | None = None,
) -> list[int]:
    """Timestamps of the accepted records of `topic`, until `expected` arrived or time or worker ran out.

    A `window` opens at the first accepted record and closes at the end, while the
    workers still run: the same span as the stage's rate."""
    stamps: list[int] = []

    def done() -> bool:
        return len(stamps) >= expected or time.monotonic() > deadline or not alive()

    async for record in read_records(settings, topic, follow=True, stop=done):
        if accept(record.value):
            stamps.append(record.timestamp)
            if window is not None and not window.is_open:
                window.open()
    if window is not None and window.is_open:
        window.close()
    return stamps


NO_CPU_NOTE = "CPU per record not measured: every output was written before the window opened"


def stage_from_stamps(name: str, stamps: list[int], expected: int, window: CpuWindow | None = None,
                      since_ms: int = 0) -> StageResult:
    """A stage's rate between its first and last output record (start-up is not counted);
    with a `window`, the CPU per record made inside it. `since_ms`: only records stamped
    after it belong to the stage (a worker that also wrote earlier ones)."""
    stamps = [s for s in stamps if s >= since_ms] if since_ms else stamps
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0
    note = "" if len(stamps) >= expected else "incomplete: see the worker log"
    result = StageResult(name, len(stamps), span or None, note=note)
    if window is not None and window.is_open:
        inside = records_after(stamps, window.opened_at_ms)
        if inside:
            result.add_cpu(window, inside)
        else:  # a small, fast stage: its outputs all came in the fetch that opened the window
            result.note = "; ".join(filter(None, [note, NO_CPU_NOTE]))
    return result


def _popen(worker: WorkerProcess, command: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **worker.settings.as_env()}
    with worker.log_path.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_all(workers: list[WorkerProcess], grace_s: float = 15.0) -> None:
    """SIGTERM to every worker at once, then wait for each (SIGKILL after `grace_s`): their
    shutdowns overlap instead of adding up."""
    for worker in workers:
        if worker.alive:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for worker in workers:
        if worker.process is None:
            continue
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()


def _pid(process: Any) -> int:
    """The pid of a WorkerProcess or a Popen (started)."""
    popen = process.process if isinstance(process, WorkerProcess) else process
    assert popen is not None, "a worker's pid before it started"
    return int(popen.pid)


def _by_role(workers: list[WorkerProcess]) -> dict[str, list[Any]]:
    roles: dict[str, list[Any]] = {}
    for worker in workers:
        roles.setdefault(worker.role, []).append(worker)
    return roles


def _alive(process: Any) -> bool:
    if isinstance(process, WorkerProcess):
        return process.alive
    return process.poll() is None


def _stop(process: Any) -> None:
    if isinstance(process, WorkerProcess):
        process.stop()
    elif isinstance(process, subprocess.Popen):
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _peak_rss_mb(worker: WorkerProcess) -> float:
    """VmHWM of a live worker process (Linux), in MiB; 0 where it cannot be read."""
    if worker.process is None:
        return 0.0
    try:
        status = Path(f"/proc/{worker.process.pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_receiver_process(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "processor.devtools.receiver", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Generous: on a machine shared with other test suites, importing aiohttp alone has taken 15 s.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the bench receiver did not start")


def broker_cpu_s(pids: tuple[int, ...]) -> float:
    """User + system CPU seconds the broker processes used so far (Linux /proc); 0 elsewhere."""
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)
