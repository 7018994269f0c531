"""`flowhook bench --stages soak`: a long run at a steady rate against misbehaving receivers.

One processor and one dispatcher, at a steady rate for `--soak-seconds`, with:
- a flaky destination: 10% of its requests answered 503, 1% hanging past the flow's
  timeout (2 s), the rest 200;
- one destination down (nothing listens on its port), for 5% of the events;
- a healthy destination (another port of the receiver, never failing), for 10% of the
  events: the control, whose first tries should not suffer from the others' faults;
- retries `[1s, 2s]` and `max_age` 60 s, so every delivery ends terminal during the run.
Before the soak proper, an unloaded phase at the same rate (no faults, no down destination)
gives the unloaded latency of first tries. Reported: the first-try latency (produce to
receipt) of the flaky-but-up destination with and without the faults, and of the healthy
one under the faults, the count of deliveries without a terminal outcome (should be 0),
outcomes, deliveries the breaker deferred, and each worker's peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from processor import records
from processor.bench.cpu import sample
from processor.bench.stages import Bench, StageResult, _peak_rss_mb
from processor.clock import iso, now_ms
from processor.devtools.broker import free_port
from processor.devtools.stack import apply_definitions
from processor.kafka import ensure_topics, make_producer, read_records
from processor.ops.summary import percentile

MINUTE_MS = 60_000
FAIL_SHARE = 0.10
HANG_SHARE = 0.01
HANG_S = 5.0
TIMEOUT = "2s"
DOWN_SHARE = 0.05
HEALTHY_SHARE = 0.10
MAX_AGE_S = 60
# The storefront's producer and the analysts' reader of the results, as such clients are set
# up: batching a little, and fetching at most twice a second (whole batches, not each record
# as it comes). Both costs the broker less per record; the embedded broker's memory store
# pays for every stored batch on each fetch of its partition (docs/reliability.md#soak).
STOREFRONT_LINGER_MS = 25
FOLLOWER_FETCH = {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 500}
SETTLE_S = 3.0  # after the last outcome: a late repeat would show
DRAIN_MAX_S = 900.0  # how long the backlog may take after the last event, beyond max_age


# --- the receiver (its own process, like the bench receiver) ------------------------------


class SoakReceiver:
    """Answers per request to /flaky: 503 (FAIL_SHARE), hang (HANG_SHARE) or 200, while
    faults are on (other paths: always 200); records the latency of each webhook-id's first
    request (produce to receipt), per phase, and separately for the healthy destination."""

    def __init__(self) -> None:
        self.faults = False
        self.phase = "warm"
        self.rng = random.Random(7)
        self.seen: set[str] = set()
        self.first_ms: dict[str, list[float]] = {"warm": [], "unloaded": [], "soak": [], "healthy": []}
        self.sent_ms: dict[str, list[int]] = {key: [] for key in self.first_ms}  # beside first_ms
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        webhook_id = request.headers.get("webhook-id", "")
        if webhook_id not in self.seen:
            self.seen.add(webhook_id)
            sent = orjson.loads(body).get("sent_ms") if body else None
            if isinstance(sent, int):
                kind = "healthy" if request.path.startswith("/healthy") else self.phase
                self.first_ms[kind].append(now_ms() - sent)
                self.sent_ms[kind].append(sent)
        if self.faults and request.path.startswith("/flaky"):
            draw = self.rng.random()
            if draw < HANG_SHARE:
                await asyncio.sleep(HANG_S)
            elif draw < HANG_SHARE + FAIL_SHARE:
                return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"ok": True})

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.phase = request.query["phase"]
            self.faults = self.phase == "soak"
        return web.json_response({"requests": self.requests, "distinct": len(self.seen),
                                  "first_ms": self.first_ms, "sent_ms": self.sent_ms})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/__soak", self.control)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def serve(port: int, healthy_port: int) -> None:
    """One receiver on two ports: two destinations (host:port) with their own queues and
    breakers in the dispatcher."""
    import uvloop  # optional: a dependency only where it builds (not on Windows)

    async def main() -> None:
        runner = web.AppRunner(SoakReceiver().app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await web.TCPSite(runner, "127.0.0.1", healthy_port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


# --- the stage ----------------------------------------------------------------------------


BODY = {"order": "{{ event.OrderId }}", "sent_ms": "{{ event.sent_ms }}"}


def _flows(receiver_url: str, down_url: str, healthy_url: str, max_age_s: int) -> list[dict[str, Any]]:
    def flow(flow_id: str, url: str, filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": flow_id, "name": flow_id, "status": "live",
                "trigger": {"metric": "Soak Order", "filters": filters}, "reentry": {"mode": "always"},
                "steps": [{"webhook": {"id": "hook", "url": url, "timeout": TIMEOUT, "retry": ["1s", "2s"],
                                       "max_age": f"{max_age_s}s", "body": BODY}}]}

    return [flow("soak-flaky", f"{receiver_url}/flaky", []),
            flow("soak-down", f"{down_url}/down", [{"property": "down", "op": "eq", "value": True}]),
            flow("soak-healthy", f"{healthy_url}/healthy",
                 [{"property": "healthy", "op": "eq", "value": True}])]


async def _produce(
    settings: Any, count: int, rate: float, run: str, *, down_share: float, healthy_share: float = 0.0
) -> tuple[int, int]:
    """Produce `count` events at `rate`; how many go to the down and the healthy destination too."""
    producer = make_producer(settings, linger_ms=STOREFRONT_LINGER_MS)
    await producer.start()
    rng = random.Random(run)
    started = time.perf_counter()
    downs = healthy = 0
    try:
        futures = []
        for index in range(count):
            down = rng.random() < down_share
            well = rng.random() < healthy_share
            downs += down
            healthy += well
            properties = {"OrderId": str(index), "sent_ms": now_ms(), "down": down, "healthy": well}
            event: dict[str, Any] = {
                "id": f"evt_{run}_{index}", "metric": "Soak Order", "time": iso(now_ms()),
                "profile": {"id": f"p_{index % 5000}"}, "properties": properties}
            futures.append(await producer.send(settings.topics.events, orjson.dumps(event),
                                               key=event["profile"]["id"].encode()))
            if (ahead := (index + 1) / rate - (time.perf_counter() - started)) > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return downs, healthy


async def _control(url: str, phase: str | None = None) -> dict[str, Any]:
    """The receiver's counts; with `phase`, first switch it (faults only in "soak")."""
    async with aiohttp.ClientSession() as session:
        if phase is None:
            async with session.get(f"{url}/__soak") as response:
                return orjson.loads(await response.read())
        async with session.post(f"{url}/__soak", params={"phase": phase}) as response:
            return orjson.loads(await response.read())


class CpuTimeline:
    """The CPU cores each process used, every `every_s` while the soak runs: at a steady rate,
    a process whose share grows is where a backlog comes from (the embedded broker's does:
    its memory store costs more per request with every batch it holds)."""

    def __init__(self, pids: dict[str, list[int]], every_s: float = 10.0) -> None:
        self.pids, self.every_s = pids, every_s
        self.rows: list[tuple[int, dict[str, float]]] = []  # (wall clock ms, cores per role)

    async def run(self) -> None:
        last, last_at = sample(self.pids), time.monotonic()
        while True:  # until cancelled
            await asyncio.sleep(self.every_s)
            now, now_at = sample(self.pids), time.monotonic()
            elapsed = now_at - last_at
            # max: a process gone since the last sample reads 0 CPU seconds
            self.rows.append((now_ms(), {role: max(0.0, now[role] - last.get(role, 0.0)) / elapsed
                                         for role in now}))
            last, last_at = now, now_at

    def per_minute(self, role: str, start_ms: int, minutes: int) -> list[float]:
        """The role's mean cores in each minute from `start_ms`."""
        spans: list[list[float]] = [[] for _ in range(minutes)]
        for at_ms, cores in self.rows:
            minute = (at_ms - start_ms - 1) // MINUTE_MS
            if 0 <= minute < minutes and role in cores:
                spans[minute].append(cores[role])
        return [sum(span) / len(span) if span else 0.0 for span in spans]


def p99_per_minute(sent_ms: list[int], latencies_ms: list[float], start_ms: int, minutes: int) -> list[float]:
    """The first tries' p99 latency per minute of sending (by the event's produce time)."""
    spans: list[list[float]] = [[] for _ in range(minutes)]
    for sent, latency in zip(sent_ms, latencies_ms, strict=True):
        minute = (sent - start_ms) // MINUTE_MS
        if 0 <= minute < minutes:
            spans[minute].append(latency)
    return [percentile(span, 0.99) or 0.0 for span in spans]


class Tally:
    """The last outcome of every delivery, followed on the results topic while the soak runs."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}
        self.deferred: dict[str, int] = {}  # flow id -> deliveries deferred at least once
        self.done = False

    async def follow(self, settings: Any) -> None:
        topic = settings.topics.results
        async for record in read_records(settings, topic, follow=True, stop=lambda: self.done,
                                         **FOLLOWER_FETCH):
            value = orjson.loads(record.value)
            if value.get("type") == "delivery":
                self.last[value["delivery_id"]] = value["outcome"]
                if value.get("deferred"):  # written once per delivery, at its first deferral
                    self.deferred[value["flow_id"]] = self.deferred.get(value["flow_id"], 0) + 1

    def terminal(self) -> int:
        return sum(1 for o in self.last.values() if o in records.TERMINAL_OUTCOMES)

    def summary(self) -> tuple[dict[str, int], int, int]:
        """(final outcomes by kind, deliveries without a terminal outcome, all deliveries)."""
        counts: dict[str, int] = {}
        for outcome in self.last.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts, len(self.last) - self.terminal(), len(self.last)


async def run_soak_stage(bench: Bench, events: int, seconds: float) -> list[StageResult]:
    port, healthy_port = free_port(), free_port()
    receiver = _start_receiver(port, healthy_port)
    url, down_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    healthy_url = f"http://127.0.0.1:{healthy_port}"
    settings = bench.settings()
    tally = Tally()
    rate = max(events / seconds, 1.0)
    max_age_s = min(MAX_AGE_S, max(5, int(seconds * 2)))  # shorter for tiny runs (tests)
    unloaded = max(min(events // 10, int(rate * 20)), 1)
    try:
        await _wait_listening(url)
        await ensure_topics(settings)  # before anything produces: partition counts must match
        flows = _flows(url, down_url, healthy_url, max_age_s)
        await apply_definitions(settings, [(f, "soak") for f in flows])
        workers = [bench.worker("processor", settings).start(), bench.worker("dispatcher", settings).start()]
        follower = asyncio.create_task(tally.follow(settings))
        pids = bench.cpu_window({w.role: [w] for w in workers}).pids
        timeline = CpuTimeline({**pids, "receiver": [receiver.pid]})
        sampler = asyncio.create_task(timeline.run())
        try:
            await _produce(settings, 1, rate, "warm", down_share=0)
            await _until(lambda: _control(url), lambda s: s["distinct"] >= 1, 120)
            await _control(url, "unloaded")
            await _produce(settings, unloaded, rate, "unloaded", down_share=0)
            await _until(lambda: _control(url), lambda s: s["distinct"] >= unloaded + 1, 120)
            await _control(url, "soak")
            started, started_ms = time.perf_counter(), now_ms()
            downs, healthy = await _produce(settings, events, rate, "soak", down_share=DOWN_SHARE,
                                            healthy_share=HEALTHY_SHARE)
            produced_s = time.perf_counter() - started
            # Until every delivery has a terminal outcome (retries, deferrals and max_age run out).
            expected = 1 + unloaded + events + downs + healthy
            deadline = time.monotonic() + max_age_s + DRAIN_MAX_S
            while (tally.terminal() < expected and time.monotonic() < deadline  # noqa: ASYNC110
                   and all(w.alive for w in workers)):  # worker processes: no event to wait on
                await asyncio.sleep(0.5)
            drained_s = time.perf_counter() - started - produced_s
            await asyncio.sleep(SETTLE_S)  # a repeat or a late outcome would show now
            stats = await _control(url)
            rss = {w.role: _peak_rss_mb(w) for w in workers}
            alive = all(w.alive for w in workers)
        finally:
            for worker in workers:
                worker.stop()
            tally.done = True
        await follower
        sampler.cancel()  # it only sleeps between samples; what it sampled is kept
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        counts, open_, total = tally.summary()
    finally:
        receiver.terminate()
    quiet = StageResult(f"soak: unloaded first tries at {rate:.0f}/s", len(stats["first_ms"]["unloaded"]),
                        None, stats["first_ms"]["unloaded"])
    soak = StageResult(f"soak: first tries, {FAIL_SHARE:.0%} 503, {HANG_SHARE:.0%} hang, one down",
                       len(stats["first_ms"]["soak"]), produced_s, stats["first_ms"]["soak"], rss)
    missing = max(0, expected - total)
    deferred = ", ".join(f"{name} {tally.deferred.get('soak-' + name, 0):,}"
                         for name in ("flaky", "down", "healthy"))
    healthy_ms = stats["first_ms"]["healthy"]
    soak.note = (f"{total:,} deliveries, {open_ + missing} not terminal, last outcome {drained_s:.0f} s "
                 f"after the last event; " + ", ".join(f"{k} {v:,}" for k, v in
                 sorted(counts.items())) + ("" if alive else "; a worker died")
                 + f"; deferred by the breaker: {deferred}"
                 + f"; healthy destination's first tries ({len(healthy_ms):,}) {_percentiles(healthy_ms)}"
                 + "; " + _by_minute(stats, timeline, started_ms, produced_s))
    if open_ or missing or not alive:
        soak.note = "incomplete: " + soak.note
    return [quiet, soak]


def _by_minute(stats: dict[str, Any], timeline: CpuTimeline, start_ms: int, produced_s: float) -> str:
    """Per minute of sending: the first tries' p99 and each process's CPU, to show whether the
    latency holds over the run or grows, and with which process's cost."""
    minutes = max(1, round(produced_s / 60))  # a last part-minute of under 30 s is left out
    p99 = p99_per_minute(stats["sent_ms"]["soak"], stats["first_ms"]["soak"], start_ms, minutes)
    roles = ("broker", "processor", "dispatcher")
    cores = {role: timeline.per_minute(role, start_ms, minutes) for role in roles}
    return (f"by minute: first-try p99 {' / '.join(f'{v:,.0f}' for v in p99)} ms; CPU cores "
            + ", ".join(f"{role} {' / '.join(f'{v:.2f}' for v in row)}" for role, row in cores.items()))


def _percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "none"
    return " / ".join(f"p{q} {percentile(latencies, q / 100):,.0f} ms" for q in (50, 95, 99))


async def _wait_listening(url: str) -> None:
    deadline = time.monotonic() + 60  # a loaded machine takes a while to start a Python process
    while True:
        try:
            await _control(url)
            return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _start_receiver(port: int, healthy_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "processor.bench.soak", str(port), str(healthy_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _until(fetch: Any, done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    # Polling another process over HTTP: there is no event to wait on.
    while not done(await fetch()) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
