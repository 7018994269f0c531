"""`flowhook demo`: the whole path on one machine, with no set-up, in under a minute.

Steps: start the embedded broker and a local receiver; create topics; apply the example
flows (their receiver URLs pointed at this receiver); start a processor and a dispatcher
as real worker processes; send the sample storefront stream; follow the results topic
until every run that entered has ended and every delivery has a final outcome; print a
few received requests and the summary; stop everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.syntax import Syntax

from processor.broker import EmbeddedBroker
from processor.kafka import ensure_topics, read_records
from processor.logs import configure
from processor.receiver import Receiver, describe, start_receiver
from processor.records import TERMINAL_OUTCOMES
from processor.resources import shipped_dir
from processor.results import summarize
from processor.sending import produce_lines, read_lines
from processor.settings import Settings
from processor.stack import WorkerProcess, apply_definitions, read_definition
from processor.summary_view import print_summary

EXAMPLE_RECEIVER = "http://127.0.0.1:8787"
DEMO_SECRETS = {
    "FLOWHOOK_SECRET_DIRECT_MAIL_TOKEN": "demo-direct-mail-token",
    "FLOWHOOK_SECRET_DIRECT_MAIL_SIGNING": "whsec_ZGVtby1zaWduaW5nLXNlY3JldC1mb3ItZmxvd2hvb2s=",
    "FLOWHOOK_SECRET_CRM_TOKEN": "demo-crm-token",
    "FLOWHOOK_SECRET_LOYALTY_TOKEN": "demo-loyalty-token",
}
QUIET_FOR_S = 3.0
SHOWN_REQUESTS = 3


def run_demo(events_file: Path | None = None, timeout_s: float = 90.0) -> int:
    """Run the demo; 0 when every due webhook reached an outcome in time, else 1."""
    configure("console", "warning")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="flowhook-demo-") as tmp:
        workdir = Path(tmp)
        console.print("[bold]Flowhook demo[/bold]: starting the embedded broker …")
        with EmbeddedBroker(log_file=workdir / "broker.log") as broker:
            settings = demo_settings(broker.bootstrap, workdir)
            events = events_file or shipped_dir("examples") / "events.jsonl"
            return asyncio.run(_demo(settings, workdir, events, timeout_s, console))


def demo_settings(bootstrap: str, workdir: Path) -> Settings:
    return Settings(
        brokers=bootstrap,
        partitions=4,
        allow_http=True,
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        data_dir=workdir / "data",
        store="memory",
        log_level="warning",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=6_000,
    )


async def _demo(settings: Settings, workdir: Path, events: Path, timeout_s: float, console: Console) -> int:
    receiver = Receiver(fail_share=0.05)
    runner, port = await start_receiver(receiver)
    workers: list[WorkerProcess] = []
    try:
        await ensure_topics(settings)
        applied = await apply_examples(settings, f"http://127.0.0.1:{port}")
        console.print(f"applied {len(applied)} example flows: {', '.join(applied)}")
        for role in ("processor", "dispatcher"):
            workers.append(WorkerProcess(role, settings, workdir / f"{role}.log", env=DEMO_SECRETS).start())
        lines = read_lines(events, "event")
        started = time.monotonic()
        sent = await produce_lines(settings, settings.topics.events, lines)
        console.print(f"sent {sent} storefront events from {events.name}; local receiver on port {port}")
        results, done = await follow_until_settled(settings, started + timeout_s, workers, console)
        show(console, receiver, results, time.monotonic() - started)
        if not done:
            for worker in workers:
                console.print(f"[red]{worker.role} log (last lines):[/red]\n{worker.tail()}")
        return 0 if done else 1
    finally:
        for worker in workers:
            worker.stop()
        await runner.cleanup()


async def apply_examples(settings: Settings, receiver_base: str) -> list[str]:
    """Publish every example flow, its receiver URLs pointed at this demo's receiver."""
    paths = sorted((shipped_dir("examples") / "flows").glob("*.yaml"))
    definitions = [(_rebase_urls(read_definition(path), receiver_base), str(path)) for path in paths]
    return await apply_definitions(settings, definitions)


def _rebase_urls(value: Any, base: str) -> Any:
    if isinstance(value, dict):
        return {k: _rebase_urls(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase_urls(v, base) for v in value]
    if isinstance(value, str) and value.startswith(EXAMPLE_RECEIVER):
        return base + value[len(EXAMPLE_RECEIVER) :]
    return value


async def follow_until_settled(
    settings: Settings, deadline: float, workers: list[WorkerProcess], console: Console
) -> tuple[list[dict[str, Any]], bool]:
    """Read results until every entered run ended and every delivery is final, quiet for a while."""
    results: list[dict[str, Any]] = []
    state = _Progress()
    settled = False

    def stop() -> bool:
        nonlocal settled
        settled = state.settled()
        return settled or time.monotonic() > deadline or not all(w.alive for w in workers)

    with console.status("waiting for every run and delivery to finish …") as status:
        async for record in read_records(settings, settings.topics.results, follow=True, stop=stop):
            value = orjson.loads(record.value)
            results.append(value)
            state.add(value)
            status.update(state.describe())
    return results, settled


class _Progress:
    """Open runs and non-final deliveries, from the results seen so far."""

    def __init__(self) -> None:
        self.open_runs: set[str] = set()
        self.pending: set[str] = set()
        self.deliveries: dict[str, str] = {}
        self.last_change = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.last_change = time.monotonic()
        if record["type"] == "run":
            if record["status"] == "entered":
                self.open_runs.add(record["run_id"])
            else:
                self.open_runs.discard(record["run_id"])
            return
        self.deliveries[record["delivery_id"]] = record["outcome"]
        if record["outcome"] in TERMINAL_OUTCOMES:
            self.pending.discard(record["delivery_id"])
        else:
            self.pending.add(record["delivery_id"])

    def settled(self) -> bool:
        quiet = time.monotonic() - self.last_change >= QUIET_FOR_S
        return quiet and bool(self.deliveries) and not self.open_runs and not self.pending

    def describe(self) -> str:
        final = len(self.deliveries) - len(self.pending)
        return (f"waiting: {len(self.open_runs)} runs open (delays), {len(self.pending)} retries pending,"
                f" {final} deliveries final")


def show(console: Console, receiver: Receiver, results: list[dict[str, Any]], elapsed_s: float) -> None:
    console.rule("a few requests the receiver got")
    shown: set[str] = set()
    for request in receiver.recent:
        if request.path in shown or len(shown) >= SHOWN_REQUESTS:
            continue
        shown.add(request.path)
        console.print(Syntax(orjson.dumps(describe(request), option=orjson.OPT_INDENT_2).decode(), "json"))
    console.rule("summary")
    print_summary(summarize(results), console)
    console.print(f"receiver got {receiver.total} requests in {elapsed_s:.1f} s "
                  f"({len(receiver.seen_ids)} distinct webhook-ids)")
