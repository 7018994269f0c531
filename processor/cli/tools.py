"""`flowhook broker|demo|dev|send|bench`: the tools around the workers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from processor.cli.base import brokers_option, load_settings, run_async
from processor.devtools.sending import produce_lines, read_lines, schema_for_topic
from processor.kafka import ensure_topics


@click.command()
@click.option("--port", default=9092, show_default=True,
              help="Loopback port to listen on (with --nodes 3: PORT, PORT+1, PORT+2).")
@click.option("--kafka", is_flag=True, help="Apache Kafka (KRaft) instead of the embedded broker.")
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Kafka nodes (broker+controller each); 3 gives replication 3, min ISR 2.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep Kafka's data here (default: a temporary folder, removed at exit).")
def broker(port: int, kafka: bool, nodes: str, data_dir: Path | None) -> None:
    """Run only a broker on loopback until Ctrl-C: the embedded one, or Apache Kafka with --kafka."""
    from processor.devtools.devserver import run_broker_only, run_kafka_only  # heavy: the embedded broker

    load_settings()
    if not kafka:
        if nodes != "1" or data_dir is not None:
            raise click.UsageError("--nodes and --data need --kafka")
        sys.exit(run_broker_only(port))
    sys.exit(run_kafka_only(port, int(nodes), data_dir, announce=click.echo))


@click.command()
@click.option("--events", "events_file", type=click.Path(path_type=Path), default=None,
              help="Events to send (default: the sample stream in examples/).")
@click.option("--timeout", default=90.0, show_default=True, help="Give up waiting after this many seconds.")
def demo(events_file: Path | None, timeout: float) -> None:
    """Everything on one machine: broker, workers, receiver, sample flows and events."""
    from processor.devtools.demo import run_demo  # heavy (aiohttp, the embedded broker): the dev tools

    sys.exit(run_demo(events_file=events_file, timeout_s=timeout))


@click.command()
@click.option("--port", default=9092, show_default=True, help="Port of the embedded broker.")
@click.option("--flows", "flows_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="Apply the flow files in this folder at start.")
@click.option("--receiver-port", default=8787, show_default=True,
              help="Port of the local receiver that the example flows post to (0: none).")
@click.option("--kafka", is_flag=True, help="Run on one Apache Kafka node, not the embedded broker.")
def dev(port: int, flows_dir: Path | None, receiver_port: int, kafka: bool) -> None:
    """Broker + processor + dispatcher (+ a local receiver) until Ctrl-C."""
    from processor.devtools.devserver import run_dev  # heavy (aiohttp, the embedded broker): the dev tools

    sys.exit(run_dev(port=port, flows_dir=flows_dir, receiver_port=receiver_port, kafka=kafka))


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--topic", default=None, help="Topic to produce to (default: the events topic).")
@click.option("--rate", type=float, default=None, help="At most this many records per second.")
@brokers_option
def send(file: Path, topic: str | None, rate: float | None, brokers: str | None) -> None:
    """Produce events (one JSON object per line) from FILE, keyed by profile, with progress."""
    settings = load_settings(brokers=brokers)
    topic = topic or settings.topics.events
    lines = read_lines(file, schema_for_topic(settings, topic))
    run_async(ensure_topics(settings, [topic]))  # an unreachable broker: one line, before any progress bar
    console = _stderr_console()
    if not console.is_terminal:  # a log or a pipe: plain progress lines instead of a bar
        progress = PlainProgress(f"sending to {topic}", len(lines))
        sent = run_async(produce_lines(settings, topic, lines, rate=rate, progress=progress.advance))
    else:
        with Progress(transient=True, console=console) as bar:
            task = bar.add_task(f"sending to {topic}", total=len(lines))
            sent = run_async(produce_lines(settings, topic, lines, rate=rate,
                                           progress=lambda n: bar.advance(task, n)))
    click.echo(f"sent {sent} records from {file} to {topic}", err=True)


class PlainProgress:
    """Progress as a plain line on stderr at most every `every_s` seconds (not a terminal)."""

    def __init__(self, what: str, total: int, every_s: float = 2.0) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self._last >= self.every_s and self.done < self.total:
            self._last = time.monotonic()
            click.echo(f"{self.what}: {self.done}/{self.total} ({self.done / self.total:.0%})", err=True)


def _stderr_console() -> Console:
    return Console(stderr=True)


@click.command()
@click.option("--events", default=20_000, show_default=True, help="Events (and requests) per stage.")
@click.option("--profiles", default=5_000, show_default=True, help="Distinct profiles the events come from.")
@click.option("--concurrency", default=256, show_default=True,
              help="In-flight requests (raw HTTP and dispatcher).")
@click.option("--brokers", default=None, help="Use this Kafka instead of starting the embedded broker.")
@click.option("--rate", type=float, default=None, help="End to end: produce at this many events per second.")
@click.option("--store", type=click.Choice(["memory", "rocksdb"]), default="memory", show_default=True,
              help="State store of the processor and the plain-agent baseline.")
@click.option("--partitions", default=8, show_default=True, help="Partitions of the bench topics.")
@click.option("--stages", default="raw,agent,processor,dispatcher,e2e,half", show_default=True,
              help="Comma-separated stages to run.")
@click.option("--state-profiles", default=1_000_000, show_default=True,
              help="Profiles (each with a pending delay) the 'state' stage fills a RocksDB state with.")
@click.option("--soak-events", default=100_000, show_default=True,
              help="Events the 'soak' stage sends at a steady rate, against failing receivers.")
@click.option("--soak-seconds", default=300.0, show_default=True, help="How long the 'soak' stage sends.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--kafka", is_flag=True, help="Run every stage on one Apache Kafka node (make kafka).")
@click.option("--scale-workers", default="1,2,4", show_default=True,
              help="'scale' stage: processors (and as many dispatchers) per run.")
@click.option("--scale-partitions", default="8,16", show_default=True,
              help="'scale' stage: partitions per run.")
@click.option("--fetchcost-batches", default="1000,2000,4000,8000", show_default=True,
              help="'fetchcost' stage: stored batches at each reading (multiples of 50).")
def bench(events: int, profiles: int, concurrency: int, brokers: str | None, rate: float | None, store: str,
          partitions: int, stages: str, state_profiles: int, soak_events: int, soak_seconds: float,
          as_json: bool, kafka: bool, scale_workers: str, scale_partitions: str,
          fetchcost_batches: str) -> None:
    """End-to-end throughput and latency against a built-in local receiver, beside same-run baselines.

    Stages: raw, agent, processor, dispatcher, e2e, half (end to end at half the e2e rate; the
    default), and on request: state (the processor with --state-profiles profiles and pending
    delays in a RocksDB state), scale (end to end with --scale-workers processors and
    dispatchers on --scale-partitions partitions), soak (--soak-events over --soak-seconds
    with 10% 503, 1% hanging and one destination down) and fetchcost (the broker's CPU per
    fetch as a partition grows). The worker stages report the CPU µs per record of each of
    their processes.
    """
    # heavy (faust, aiohttp, the embedded broker): only this command needs the bench
    from processor.bench.fetchcost import parse_fetchcost_steps
    from processor.bench.run import run_bench
    from processor.bench.scale import parse_counts
    from processor.bench.stages import ALL_STAGES, BenchConfig

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in ALL_STAGES]
    if unknown:
        raise click.UsageError(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(ALL_STAGES)}")
    config = BenchConfig(events=events, profiles=profiles, concurrency=concurrency, brokers=brokers,
                         rate=rate, store=store, partitions=partitions, stages=chosen,
                         state_profiles=state_profiles, soak_events=soak_events, soak_seconds=soak_seconds,
                         broker="kafka" if kafka else "embedded",
                         scale_workers=parse_counts("--scale-workers", scale_workers),
                         scale_partitions=parse_counts("--scale-partitions", scale_partitions),
                         fetchcost_batches=parse_fetchcost_steps(fetchcost_batches))
    sys.exit(run_bench(config, as_json=as_json))
