"""`flowhook broker` and `flowhook dev`: long-running local set-ups, until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from processor.constants import SECRET_ENV_PREFIX
from processor.devtools.broker import EmbeddedBroker
from processor.devtools.demo import DEMO_SECRETS
from processor.devtools.devwatch import Supervisor, show_deliveries, watch
from processor.devtools.kafka_runner import KafkaCluster
from processor.devtools.receiver import Receiver, start_receiver
from processor.devtools.stack import apply_definitions, read_definition
from processor.dispatch.secrets import secret_names
from processor.errors import ConfigError
from processor.kafka import ensure_topics
from processor.logs import configure, get_logger
from processor.settings import Settings

log = get_logger(__name__)


def _wait_for_ctrl_c() -> None:
    """Block until Ctrl-C or SIGTERM; both raise KeyboardInterrupt, which the callers suppress
    outside their `with`, so whatever they run is stopped first.

    Short sleeps rather than an event loop's signal handlers: a signal is acted on within
    half a second whenever it comes, with no window between handlers being swapped (an
    earlier asyncio version now and then missed a Ctrl-C sent right at start-up)."""
    # SIGINT explicitly too: a shell script's background job inherits it ignored, and
    # `kill -INT` from that script must still stop the broker.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupt)
    while True:
        time.sleep(0.5)


def run_broker_only(port: int) -> int:
    """The embedded broker on 127.0.0.1:<port> until Ctrl-C."""
    # Ctrl-C at any moment, start-up included, is a clean stop.
    with contextlib.suppress(KeyboardInterrupt), EmbeddedBroker(port=port) as broker:
        log.info("broker_ready", bootstrap=broker.bootstrap, hint="Ctrl-C stops it")
        _wait_for_ctrl_c()
    return 0


def run_kafka_only(port: int, nodes: int, data_dir: Path | None, announce: Callable[[str], None]) -> int:
    """Apache Kafka (KRaft) on 127.0.0.1:<port>[..+2] until Ctrl-C or SIGTERM."""
    # SIGTERM while starting stops the nodes the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = KafkaCluster(nodes=nodes, port=port, data_dir=data_dir)
    with contextlib.suppress(KeyboardInterrupt), cluster:
        log.info("kafka_ready", bootstrap=cluster.bootstrap, nodes=nodes,
                 data=str(cluster.data_dir), hint="Ctrl-C stops it")
        announce(cluster.bootstrap)  # the bootstrap servers, on stdout, for scripts
        _wait_for_ctrl_c()
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _dev_broker(port: int, kafka: bool, workdir: Path) -> Any:
    """The broker `dev` runs: the embedded one, or a single Apache Kafka node."""
    if kafka:
            return KafkaCluster(nodes=1, port=port, data_dir=workdir / "kafka")
    return EmbeddedBroker(port=port, log_file=workdir / "broker.log")


def run_dev(port: int, flows_dir: Path | None, receiver_port: int, kafka: bool = False) -> int:
    """Broker, processor, dispatcher and a local receiver, until Ctrl-C (exit 0), or until a
    worker keeps dying (exit 1). Ready once every worker's /readyz says so."""
    base = Settings.from_env()
    configure(base.log_format, base.log_level)
    settings = base.with_(
        brokers=f"127.0.0.1:{port}",
        allow_http=True,
        allow_networks=base.allow_networks or (ipaddress.ip_network("127.0.0.0/8"),),
        store="memory",
    )
    workdir = settings.data_dir / "dev"
    if kafka:
        settings = settings.with_(idempotence=True)  # Kafka has idempotent producers
    signal.signal(signal.SIGTERM, _raise_interrupt)
    code = 0
    # Ctrl-C at any moment, start-up included, is a clean stop.
    with contextlib.suppress(KeyboardInterrupt), _dev_broker(port, kafka, workdir) as broker:
        definitions = asyncio.run(_prepare(settings, flow_files(flows_dir) if flows_dir else []))
        supervisor = Supervisor(settings, workdir, env=example_secrets(definitions))
        try:
            supervisor.start()
            code = asyncio.run(_serve(supervisor, broker.bootstrap, broker.kind, receiver_port))
        finally:
            supervisor.stop()
    return code


async def _serve(supervisor: Supervisor, bootstrap: str, kind: str, receiver_port: int) -> int:
    """Receiver up, workers ready, then show deliveries and worker trouble until stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await _start_receiver(receiver_port)
    try:
        if not await supervisor.wait_ready(stop):
            if stop.is_set():
                return 0
            supervisor.show_logs()
            log.error("dev_not_ready", reason=supervisor.failed or "the workers did not become ready")
            return 1
        ports = ",".join(f"127.0.0.1:{w.port}" for w in supervisor.workers if w.role == "processor")
        log.info("dev_ready", bootstrap=bootstrap, broker=kind, logs=str(supervisor.workdir),
                 processor_endpoints=ports, hint="Ctrl-C stops it")
        tasks = [asyncio.create_task(watch(supervisor, stop)),
                 asyncio.create_task(show_deliveries(supervisor.settings, stop))]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 1 if supervisor.failed else 0
    finally:
        if runner is not None:
            await runner.cleanup()


async def _start_receiver(receiver_port: int) -> Any:
    if not receiver_port:
        return None
    try:
        runner, bound = await start_receiver(Receiver(), receiver_port)
    except OSError as exc:
        raise ConfigError(f"--receiver-port {receiver_port}: cannot listen on 127.0.0.1: {exc.strerror}") \
            from None
    log.info("receiver_ready", url=f"http://127.0.0.1:{bound}/")
    return runner


def flow_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml"), *folder.glob("*.json")])


async def _prepare(settings: Settings, paths: list[Path]) -> list[dict[str, Any]]:
    await ensure_topics(settings)
    definitions = [read_definition(p) for p in paths]
    if paths:
        applied = await apply_definitions(settings, list(zip(definitions, map(str, paths), strict=True)))
        log.info("flows_applied", flows=applied)
    return definitions


def example_secrets(definitions: list[dict[str, Any]]) -> dict[str, str]:
    """The secrets the flows need that the environment lacks: the examples' own are set to
    their demo values (logged by name); any other is named as missing (its deliveries wait
    until it is set, see SPEC §3)."""
    needed = sorted({n for d in definitions for n in secret_names(orjson.dumps(d).decode())})
    env, missing = {}, []
    for name in needed:
        var = SECRET_ENV_PREFIX + name.upper()
        if os.environ.get(var):
            continue
        if var in DEMO_SECRETS:
            env[var] = DEMO_SECRETS[var]
        else:
            missing.append(var)
    if env:
        log.info("example_secrets_set", secrets=sorted(env), hint="demo values; export your own to override")
    if missing:
        log.warning("secrets_missing", secrets=missing,
                    hint="export them before `flowhook dev`: their deliveries wait until they are set")
    return env
