"""`flowhook bench` from start to end: the broker and receiver, each stage in turn, the report.

Apart from `stages` so that the stages the other modules add (`state`, `soak`) can build on
`stages.Bench` without an import cycle.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from processor.bench.fetchcost import run_fetch_cost_stage
from processor.bench.report import print_report
from processor.bench.scale import run_scale_stage
from processor.bench.soak import run_soak_stage
from processor.bench.stages import (
    Bench,
    BenchConfig,
    StageResult,
    broker_cpu_s,
    start_receiver_process,
)
from processor.bench.state import run_state_stage
from processor.devtools.broker import EmbeddedBroker, free_port
from processor.logs import configure


async def run_stages(bench: Bench) -> list[StageResult]:
    chosen = bench.config.stages
    stage_functions = {"raw": bench.raw_http, "agent": bench.plain_agent, "processor": bench.processor,
                       "dispatcher": bench.dispatcher}
    results: list[StageResult] = []
    for name in chosen:
        cpu_before = broker_cpu_s(bench.broker_pids)
        if name == "state":
            stage = await run_state_stage(bench, bench.config.state_profiles)
        elif name == "soak":
            stage = await run_soak_stage(bench, bench.config.soak_events, bench.config.soak_seconds)
        elif name == "scale":
            stage = await run_scale_stage(bench)
        elif name == "fetchcost":
            stage = await run_fetch_cost_stage(bench, bench.config.fetchcost_batches)
        elif name == "e2e" or (name == "half" and "e2e" not in chosen):
            # The half-rate pass runs on the end-to-end stage's workers, after it.
            stage = await bench.end_to_end(full=name == "e2e", half="half" in chosen)
        elif name == "half":
            continue
        else:
            stage = [await stage_functions[name]()]
        if bench.broker_pids and stage:
            stage[0].broker_cpu_s = broker_cpu_s(bench.broker_pids) - cpu_before
        results += stage
    return results


def run_bench(config: BenchConfig, as_json: bool = False) -> int:
    configure("console", "warning")
    with tempfile.TemporaryDirectory(prefix="flowhook-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        receiver = start_receiver_process(port)
        broker = None
        try:
            # Inside the try: a broker that fails to start must not leave the receiver running.
            broker = None if config.brokers else _start_broker(config, workdir)
            brokers = broker.bootstrap if broker is not None else str(config.brokers)
            pids = tuple(broker.pids()) if broker is not None else ()
            results = _run(Bench(config, brokers, workdir, port, pids, receiver_pid=receiver.pid))
        finally:
            receiver.terminate()
            if broker is not None:
                broker.stop()
    report(config, results, as_json)
    return 0 if all(not r.note.startswith(("incomplete", "not ready")) for r in results) else 1


def _start_broker(config: BenchConfig, workdir: Path) -> Any:
    """The broker the stages run on: the embedded one, or one Apache Kafka node."""
    if config.broker == "kafka":
        from processor.devtools.kafka_runner import KafkaCluster  # only --kafka needs the jars' runner

        return KafkaCluster(nodes=1, data_dir=workdir / "kafka").start()
    return EmbeddedBroker(log_file=workdir / "broker.log").start()


def _run(bench: Bench) -> list[StageResult]:
    import uvloop  # optional: a dependency only where it builds (not on Windows)

    return uvloop.run(run_stages(bench))


def report(config: BenchConfig, results: list[StageResult], as_json: bool) -> None:
    if as_json:
        payload = {"config": config.__dict__, "stages": [r.as_dict() for r in results]}
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_report(config, results)
