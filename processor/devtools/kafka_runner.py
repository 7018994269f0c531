"""Apache Kafka 4.x in KRaft mode on loopback, from the jars `make kafka` fetches.

`flowhook broker --kafka`, `flowhook dev --kafka`, `flowhook bench --kafka` and the Kafka
test legs run Kafka through `KafkaCluster`. Each node is one JVM, broker and controller
combined (`process.roles=broker,controller`); node i (0-based) serves clients on PORT+i and
its controller on a port of its own. Starting a cluster:
1. format each node's storage with one cluster id (`kafka.tools.StorageTool format`);
2. start every node (`java -cp .kafka/lib/* kafka.Kafka server.properties`);
3. wait until a metadata request lists every node.
Stopping sends SIGTERM to every node, then SIGKILL to any still there after a grace time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from aiokafka import AIOKafkaClient

from processor.devtools.broker import HOST, StartStop, _port_open, free_port
from processor.errors import FlowhookError, KafkaUnavailable
from processor.kafka_settings import BrokerSettings
from processor.logs import get_logger

log = get_logger(__name__)

# Small heaps and the serial collector: the machines running this have 2 cores and run
# several nodes, workers and a receiver at once. C1 only (TieredStopAtLevel=1) starts a node
# in about half the time and is plenty at the rates a local cluster sees.
JVM_OPTIONS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)
# Local clusters only: few partitions for the internal topics, so a node starts and a first
# consumer group forms quickly.
LOCAL_PROPERTIES = {
    "offsets.topic.num.partitions": "8",
    "num.partitions": "1",
    "log.segment.bytes": str(64 * 1024 * 1024),
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.flush.interval.messages": str(2**62),  # durability comes from replication, as in production
}
STOP_GRACE_S = 10.0
KEYSTORE_PASSWORD = "flowhook-local"  # noqa: S105 - a throw-away keystore of a loopback test broker
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaStartError(FlowhookError):
    """A Kafka node exited or did not become ready."""


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def kafka_lib_dir() -> Path:
    """Where `make kafka` puts the jars (FLOWHOOK_KAFKA_LIB overrides)."""
    configured = os.environ.get("FLOWHOOK_KAFKA_LIB")
    return Path(configured) if configured else project_root() / ".kafka" / "lib"


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailable(
            "java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jdk-headless maven)"
        )
    return found


def check_runtime(lib: Path | None = None) -> tuple[str, Path]:
    """(java, jar folder), or KafkaUnavailable naming the command that fixes it."""
    java = find_java()
    lib = lib or kafka_lib_dir()
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise KafkaUnavailable(f"Apache Kafka jars not found in {lib}: run `make kafka` (needs Maven)")
    return java, lib


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def free_port_block(count: int) -> int:
    """The first of `count` consecutive loopback ports that are all free now."""
    for _ in range(200):
        first = free_port()
        if first + count < 65536 and not any(_port_open(first + i) for i in range(1, count)):
            return first
    raise KafkaStartError(f"no {count} consecutive free ports on {HOST}")


@dataclass
class SaslListener:
    """A second listener with SASL (PLAIN and SCRAM) for the given users, on its own ports;
    with `tls` it is SASL_SSL, with a self-signed certificate for 127.0.0.1 (`ca_file`)."""

    users: dict[str, str]
    ports: list[int] = field(default_factory=list)
    tls: bool = False
    ca_file: Path | None = None

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{p}" for p in self.ports)


@dataclass
class KafkaNode:
    index: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def node_id(self) -> int:
        return self.index + 1

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class KafkaCluster(StartStop):
    """One or three Kafka nodes on 127.0.0.1; a context manager, or start()/stop()."""

    kind = "kafka"

    def __init__(
        self,
        nodes: int = 1,
        port: int | None = None,
        data_dir: Path | None = None,
        settings: BrokerSettings | None = None,
        sasl_users: dict[str, str] | None = None,
        tls: bool = False,
        lib: Path | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise KafkaStartError(f"--nodes {nodes}: use 1 or 3")
        self.java, self.lib = check_runtime(lib)
        self.settings = settings or BrokerSettings.for_nodes(nodes)
        self._temp = None if data_dir else tempfile.TemporaryDirectory(prefix="flowhook-kafka-")
        self.data_dir = Path(data_dir or self._temp.name)  # type: ignore[union-attr]
        first = port or free_port_block(nodes)
        self.nodes = [
            KafkaNode(i, first + i, free_port(), self.data_dir / f"node-{i + 1}") for i in range(nodes)
        ]
        self.sasl = (SaslListener(sasl_users, [free_port() for _ in range(nodes)], tls=tls)
                     if sasl_users else None)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    @property
    def replication(self) -> int:
        return self.settings.replication

    @property
    def min_insync_replicas(self) -> int:
        return self.settings.min_insync_replicas

    # --- start ----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Self:
        for node in self.nodes:
            if _port_open(node.port):
                raise KafkaStartError(
                    f"port {node.port} on {HOST} is already in use; pick another with --port"
                )
        try:
            self._format()
            for node in self.nodes:
                self._launch(node)
            self.wait_ready(timeout)
        except BaseException:  # Ctrl-C or a failure while starting: leave no JVM behind
            self.stop()
            raise
        log.info("kafka_started", bootstrap=self.bootstrap, nodes=len(self.nodes))
        return self

    def _format(self) -> None:
        """Write each node's server.properties and format its storage (skipped if formatted)."""
        cluster_id = self._cluster_id()
        if self.sasl is not None and self.sasl.tls:
            self.sasl.ca_file = self._make_certificate()
        formats = []
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(self._properties_text(node))
            if (node.directory / "data" / "meta.properties").exists():
                continue
            formats.append(subprocess.Popen(
                self._java_command("kafka.tools.StorageTool", "format", "--ignore-formatted",
                                   f"--cluster-id={cluster_id}", "-c", str(node.config_path),
                                   *self._scram_args()),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ))
        for process in formats:  # in parallel: each is a JVM start
            out, _ = process.communicate(timeout=120)
            if process.returncode != 0:
                text = out.decode(errors="replace")[-800:]
                raise KafkaStartError(f"formatting Kafka storage failed: {text}")

    def _cluster_id(self) -> str:
        """One id per data folder, kept so that a node restarted on old data still matches."""
        path = self.data_dir / "cluster-id"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        path.write_text(cluster_id)
        return cluster_id

    def _make_certificate(self) -> Path:
        """A PKCS12 keystore with a self-signed certificate for 127.0.0.1, and its PEM for clients."""
        keystore, pem = self.data_dir / "broker.p12", self.data_dir / "ca.pem"
        if not keystore.exists():
            keytool = str(Path(self.java).with_name("keytool"))
            common = ["-keystore", str(keystore), "-storetype", "PKCS12", "-storepass", KEYSTORE_PASSWORD]
            subprocess.run([keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
                            "-dname", f"CN={HOST}", "-ext", f"SAN=IP:{HOST},DNS:localhost",
                            "-validity", "30", "-keypass", KEYSTORE_PASSWORD, *common],
                           check=True, capture_output=True, timeout=60)
            subprocess.run([keytool, "-exportcert", "-rfc", "-alias", "broker", "-file", str(pem), *common],
                           check=True, capture_output=True, timeout=60)
        return pem

    def _scram_args(self) -> list[str]:
        if self.sasl is None:
            return []
        args = []
        for user, password in self.sasl.users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        return args

    def _launch(self, node: KafkaNode) -> None:
        with node.log_path.open("ab") as out:
            node.process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(node.config_path)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the nodes
            )
        log.debug("kafka_node_started", node=node.node_id, port=node.port, pid=node.process.pid)

    def _java_command(self, main: str, *args: str) -> list[str]:
        log_config = project_root() / "deploy" / "kafka" / "log4j2.properties"
        return [
            self.java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log_config}",
            "-cp", f"{self.lib}/*", main, *args,
        ]

    def wait_ready(self, timeout: float) -> None:
        """Until a metadata request from every node's port lists all nodes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    tail = node.log_path.read_text(errors="replace")[-1500:]
                    code = node.process.returncode
                    raise KafkaStartError(f"Kafka node {node.node_id} exited ({code}): {tail}")
            listening = all(_port_open(node.port) for node in self.nodes)
            if listening and asyncio.run(_cluster_size(self.bootstrap)) == len(self.nodes):
                return
            time.sleep(0.3)
        raise KafkaStartError(f"Kafka at {self.bootstrap} was not ready within {timeout:.0f}s")

    def _properties_text(self, node: KafkaNode) -> str:
        lines = [f"{key}={value}" for key, value in self.node_properties(node).items()]
        return "\n".join(lines) + "\n"

    def node_properties(self, node: KafkaNode) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)
        listeners = [f"PLAINTEXT://{HOST}:{node.port}", f"CONTROLLER://{HOST}:{node.controller_port}"]
        advertised = [f"PLAINTEXT://{HOST}:{node.port}"]
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            **self.settings.server_properties(),
            **LOCAL_PROPERTIES,
        }
        if self.sasl is not None:
            sasl_port = self.sasl.ports[node.index]
            listeners.append(f"SASL://{HOST}:{sasl_port}")
            advertised.append(f"SASL://{HOST}:{sasl_port}")
            protocols += f",SASL:{self.sasl.protocol}"
            props.update(_sasl_properties(self.sasl.users))
            if self.sasl.tls:
                props.update({
                    "ssl.keystore.location": str(self.data_dir / "broker.p12"),
                    "ssl.keystore.type": "PKCS12",
                    "ssl.keystore.password": KEYSTORE_PASSWORD,
                    "ssl.key.password": KEYSTORE_PASSWORD,
                })
        props["listeners"] = ",".join(listeners)
        props["advertised.listeners"] = ",".join(advertised)
        props["listener.security.protocol.map"] = protocols
        return props

    # --- faults (tests) -------------------------------------------------------------

    def kill(self, index: int) -> None:
        """SIGKILL one node: the crash the fault tests make."""
        node = self.nodes[index]
        if node.alive:
            assert node.process is not None
            node.process.kill()
            node.process.wait(timeout=10)

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        self.kill(index)
        self._launch(node)

    def pause(self, index: int = 0) -> None:
        """SIGSTOP one node (failure tests)."""
        process = self.nodes[index].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)

    def resume(self, index: int = 0) -> None:
        process = self.nodes[index].process
        assert process is not None
        process.send_signal(signal.SIGCONT)

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]

    # --- stop -----------------------------------------------------------------------

    def stop(self, graceful: bool | None = None) -> None:
        """Stop every node: SIGTERM and a grace time when the data is kept (or `graceful`), else
        SIGKILL at once (data thrown away needs no clean shut-down, and the last nodes of a
        cluster stopping together wait for a controller quorum that is gone)."""
        graceful = self._temp is None if graceful is None else graceful
        running = [n for n in self.nodes if n.alive]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            if graceful:
                node.process.terminate()
            else:
                node.process.kill()
        deadline = time.monotonic() + STOP_GRACE_S
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)
        if running:
            log.info("kafka_stopped", bootstrap=self.bootstrap)
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None


def _sasl_properties(users: dict[str, str]) -> dict[str, str]:
    plain_users = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    return {
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        "listener.name.sasl.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
        "listener.name.sasl.scram-sha-256.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    }


async def _cluster_size(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists; 0 while it does not answer."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    except Exception:  # any failure here means "not yet"
        return 0
    finally:
        await client.close()
