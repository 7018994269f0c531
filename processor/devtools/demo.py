"""`flowhook demo`: the whole path on one machine, with no set-up, in under a minute.

Steps: start the embedded broker and a local receiver; create topics; apply the example
flows (their receiver URLs pointed at this receiver); start a processor and a dispatcher
as real worker processes and wait until both answer `/readyz`; apply the birthday flow with
its firing time moved into the demo window, and send profile updates for a few sample
profiles whose birthday is in 3 days (so its date trigger fires during the demo, through the
real scheduling path); send the sample storefront stream; follow the results topic until
every run that entered has ended, every delivery has a final outcome and the birthday
webhooks went out; print a few received requests and the summary; stop everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.syntax import Syntax

from processor.devtools.broker import EmbeddedBroker, free_port
from processor.devtools.receiver import Receiver, describe, start_receiver
from processor.devtools.sending import Line, produce_lines, read_lines
from processor.devtools.stack import WorkerProcess, apply_definitions, read_definition
from processor.kafka import ensure_topics, read_records
from processor.logs import configure
from processor.ops.readiness import wait_for_figure, wait_ready
from processor.ops.summary import summarize
from processor.ops.summary_table import print_summary
from processor.records import TERMINAL_OUTCOMES
from processor.resources import shipped_dir
from processor.settings import Settings

EXAMPLE_RECEIVER = "http://127.0.0.1:8787"
DEMO_SECRETS = {
    "FLOWHOOK_SECRET_DIRECT_MAIL_TOKEN": "demo-direct-mail-token",
    "FLOWHOOK_SECRET_DIRECT_MAIL_SIGNING": "whsec_ZGVtby1zaWduaW5nLXNlY3JldC1mb3ItZmxvd2hvb2s=",
    "FLOWHOOK_SECRET_CRM_TOKEN": "demo-crm-token",
    "FLOWHOOK_SECRET_LOYALTY_TOKEN": "demo-loyalty-token",
}
QUIET_FOR_S = 3.0
SHOWN_REQUESTS = 3
BIRTHDAY_FLOW = "birthday-loyalty"
BIRTHDAY_PROFILES = 5
# The birthday flow fires this long after the workers are ready: time enough for the
# processor to see the profile updates first (it schedules a firing only in the future).
BIRTHDAY_AFTER_S = 6.0
READY_TIMEOUT_S = 60.0


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
        base = f"http://127.0.0.1:{port}"
        applied = await apply_examples(settings, base, skip={BIRTHDAY_FLOW})
        started = time.monotonic()
        ports = {role: free_port() for role in ("processor", "dispatcher")}
        for role in ("processor", "dispatcher"):
            env = {**DEMO_SECRETS, "FLOWHOOK_METRICS_PORT": str(ports[role])}
            workers.append(WorkerProcess(role, settings, workdir / f"{role}.log", env=env).start())
        with console.status("waiting for the workers to join and be ready …"):
            ready = await wait_ready(list(ports.values()), READY_TIMEOUT_S,
                                     lambda: all(w.alive for w in workers))
        if not ready:
            console.print("[red]the workers did not become ready[/red]")
            _print_tails(console, workers)
            return 1
        birthdays = await start_birthdays(settings, base, console, ports["processor"])
        applied.append(f"{BIRTHDAY_FLOW} (moved into the demo window)")
        console.print(f"applied {len(applied)} example flows: {', '.join(applied)}")
        lines = read_lines(events, "event")
        sent = await produce_lines(settings, settings.topics.events, lines)
        console.print(f"sent {sent} storefront events from {events.name}; local receiver on port {port}")
        results, done = await follow_until_settled(settings, started + timeout_s, workers, console,
                                                   expect={BIRTHDAY_FLOW: birthdays})
        show(console, receiver, results, time.monotonic() - started)
        if not done:
            _print_tails(console, workers)
        return 0 if done else 1
    finally:
        for worker in workers:
            worker.stop()
        await runner.cleanup()


def _print_tails(console: Console, workers: list[WorkerProcess]) -> None:
    for worker in workers:
        console.print(f"[red]{worker.role} log (last lines):[/red]\n{worker.tail()}", markup=True)


async def apply_examples(settings: Settings, receiver_base: str, skip: set[str] | None = None) -> list[str]:
    """Publish the example flows (but those in `skip`), receiver URLs pointed at this demo's receiver."""
    definitions = [(_rebase_urls(definition, receiver_base), source)
                   for definition, source in _examples() if definition["id"] not in (skip or set())]
    return await apply_definitions(settings, definitions)


def _examples() -> list[tuple[dict[str, Any], str]]:
    paths = sorted((shipped_dir("examples") / "flows").glob("*.yaml"))
    return [(read_definition(path), str(path)) for path in paths]


def birthday_in_window(definition: dict[str, Any], fire_at: datetime) -> tuple[dict[str, Any], str]:
    """The birthday flow moved to fire at `fire_at` for profiles whose birthday is that many
    days later than its offset says (3 days before, as shipped), and that birthday date.

    The trigger keeps its meaning (N days before the birthday); only the time of day moves,
    from the flow's `at` to `fire_at` to the second (a `HH:MM` plus an offset in ms)."""
    trigger = dict(definition["trigger"]["date_property"])
    days_before = _days(trigger.get("offset", "0d"))
    birthday = (fire_at + timedelta(days=days_before)).date()
    within_minute_ms = fire_at.second * 1000 + fire_at.microsecond // 1000
    trigger.update(at=fire_at.strftime("%H:%M"), timezone="UTC",
                   offset=f"{within_minute_ms - days_before * 86_400_000}ms")
    return {**definition, "trigger": {"date_property": trigger}}, birthday.isoformat()


def _days(offset: str) -> int:
    """Whole days before the date that a `-3d`-style offset means (0 for anything else)."""
    text = offset.strip()
    return int(text[1:-1]) if text.startswith("-") and text.endswith("d") and text[1:-1].isdigit() else 0


def _rebase_urls(value: Any, base: str) -> Any:
    if isinstance(value, dict):
        return {k: _rebase_urls(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase_urls(v, base) for v in value]
    if isinstance(value, str) and value.startswith(EXAMPLE_RECEIVER):
        return base + value[len(EXAMPLE_RECEIVER) :]
    return value


async def start_birthdays(
    settings: Settings, receiver_base: str, console: Console, processor_port: int
) -> int:
    """Apply the birthday flow moved into the demo window, send its sample profiles, and wait
    until the processor has both: it schedules a firing only while the time is still ahead."""
    [(shipped, source)] = [(d, s) for d, s in _examples() if d["id"] == BIRTHDAY_FLOW]
    fire_at = datetime.now(tz=UTC) + timedelta(seconds=BIRTHDAY_AFTER_S)
    moved, birthday = birthday_in_window(_rebase_urls(shipped, receiver_base), fire_at)
    await apply_definitions(settings, [(moved, source)])
    flows = len(_examples())
    if not await wait_for_figure(processor_port, lambda m: m.readyz.get("flows", 0) >= flows, 10):
        return 0
    profiles: list[dict[str, Any]] = [
        {"id": f"p_bday_{n}", "email": f"birthday{n}@example.com", "first_name": f"Cake{n}",
         "properties": {"birthday": f"1990{birthday[4:]}"}} for n in range(BIRTHDAY_PROFILES)]
    lines = [Line(n, p["id"].encode(), orjson.dumps(p)) for n, p in enumerate(profiles, 1)]
    await produce_lines(settings, settings.topics.profiles, lines)
    handled = f'flowhook_events_total{{outcome="accepted",topic="{settings.topics.profiles}"}}'
    if not await wait_for_figure(processor_port, lambda m: m.sample(handled) >= BIRTHDAY_PROFILES, 10):
        return 0
    at = shipped["trigger"]["date_property"].get("at", "09:00")
    console.print(f"{BIRTHDAY_FLOW}: {BIRTHDAY_PROFILES} sample profiles have their birthday on "
                  f"{birthday[5:]}; the flow fires 3 days before at {at} UTC, moved to "
                  f"{fire_at:%H:%M:%S} UTC for this demo")
    return BIRTHDAY_PROFILES


async def follow_until_settled(
    settings: Settings, deadline: float, workers: list[WorkerProcess], console: Console,
    expect: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Read results until every entered run ended and every delivery is final, quiet for a
    while, and each flow in `expect` has at least that many final deliveries."""
    results: list[dict[str, Any]] = []
    state = _Progress(expect or {})
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

    def __init__(self, expect: dict[str, int]) -> None:
        self.open_runs: set[str] = set()
        self.pending: set[str] = set()
        self.deliveries: dict[str, str] = {}
        self.expect = dict(expect)  # flow id -> final deliveries still to come
        self.last_change = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.last_change = time.monotonic()
        if record["type"] == "run":
            if record["status"] == "entered":
                self.open_runs.add(record["run_id"])
            else:
                self.open_runs.discard(record["run_id"])
            return
        first_final = self.deliveries.get(record["delivery_id"]) not in TERMINAL_OUTCOMES
        self.deliveries[record["delivery_id"]] = record["outcome"]
        if record["outcome"] in TERMINAL_OUTCOMES:
            self.pending.discard(record["delivery_id"])
            if first_final and record["flow_id"] in self.expect:
                self.expect[record["flow_id"]] -= 1
        else:
            self.pending.add(record["delivery_id"])

    def settled(self) -> bool:
        quiet = time.monotonic() - self.last_change >= QUIET_FOR_S
        expected = all(n <= 0 for n in self.expect.values())
        return quiet and expected and bool(self.deliveries) and not self.open_runs and not self.pending

    def describe(self) -> str:
        final = len(self.deliveries) - len(self.pending)
        birthdays = sum(max(0, n) for n in self.expect.values())
        return (f"waiting: {len(self.open_runs)} runs open (delays), {len(self.pending)} retries pending,"
                f" {birthdays} date-triggered webhooks to come, {final} deliveries final")


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
