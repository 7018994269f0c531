"""deploy/ names only what exists: broker settings from one source, real commands, env vars, ports, paths.

Docker and Kubernetes are not available where the tests run, so these check the files
against the project instead of running them (README, "Production").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

from processor.cli.main import cli
from processor.kafka_settings import BrokerSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
K8S = list(yaml.safe_load_all((DEPLOY / "k8s" / "flowhook.yaml").read_text()))
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
SOURCE = "\n".join(p.read_text() for p in (ROOT / "processor").rglob("*.py"))


def _pom_kafka_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(DEPLOY / "kafka" / "pom.xml").getroot()  # noqa: S314 - our own file
    version = root.find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text
    return version.text


def _k8s(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name)


def test_compose_broker_settings_are_the_runners() -> None:
    """Compose's Kafka gets exactly the broker settings `flowhook broker --kafka` uses for one node."""
    env = {k: str(v) for k, v in COMPOSE["services"]["kafka"]["environment"].items()}
    wanted = BrokerSettings.for_nodes(1).compose_environment()
    assert {k: env.get(k) for k in wanted} == wanted


def test_compose_runs_the_kafka_version_the_pom_pins() -> None:
    """The Kafka image tag is the version deploy/kafka/pom.xml fetches for tests and dev (4.1)."""
    image = COMPOSE["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{_pom_kafka_version()}"
    assert _pom_kafka_version().startswith("4.1.")


def test_every_env_var_named_in_deploy_is_read_by_flowhook() -> None:
    """Each FLOWHOOK_* variable in deploy/ appears in the package's source (secrets by prefix)."""
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    names = set(re.findall(r"FLOWHOOK_[A-Z0-9_]+", text))
    assert names, "deploy/ names no variables?"
    unknown = {n for n in names if not n.startswith("FLOWHOOK_SECRET_") and f'"{n}"' not in SOURCE}
    # Some are read in a loop over Settings' field names (FLOWHOOK_<FIELD>).
    from processor.settings import Settings

    fields = {f"FLOWHOOK_{f.upper()}" for f in Settings.__dataclass_fields__}
    assert unknown - fields == set()


def test_every_command_in_deploy_is_a_flowhook_command() -> None:
    """Container commands and the commands in comments are real `flowhook` commands."""
    # Services built from the Flowhook image (Prometheus and Kafka run their own images).
    used = [s["command"][0] for s in COMPOSE["services"].values() if "command" in s and "build" in s]
    used += [c["args"][0] for d in K8S if d["kind"] in ("StatefulSet", "Deployment")
             for c in d["spec"]["template"]["spec"]["containers"]]
    text = (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "k8s" / "flowhook.yaml").read_text()
    used += re.findall(r"run --rm processor (\w+)", text) + re.findall(r"flowhook (\w+)", text)
    assert used
    assert set(used) <= set(cli.commands), set(used) - set(cli.commands)


def test_ports_and_paths_in_deploy_match() -> None:
    """Workers reach Kafka on its listener port; state lives where the image and volumes put it."""
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    worker_env = COMPOSE["services"]["processor"]["environment"]
    assert worker_env["FLOWHOOK_BROKERS"] in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "FLOWHOOK_DATA_DIR=/data" in DOCKERFILE and "mkdir /data" in DOCKERFILE
    assert worker_env["FLOWHOOK_DATA_DIR"] == "/data"
    assert COMPOSE["services"]["processor"]["volumes"] == ["processor-state:/data"]
    config = _k8s("ConfigMap", "flowhook")["data"]
    pod = _k8s("StatefulSet", "flowhook-processor")["spec"]["template"]["spec"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts[0]["mountPath"] == config["FLOWHOOK_DATA_DIR"]
    # `compose run --rm processor flows apply /app/examples/flows`: the image copies examples/ to /app.
    assert "WORKDIR /app" in DOCKERFILE and "COPY examples ./examples" in DOCKERFILE
    assert (ROOT / "examples" / "flows").is_dir()


def test_k8s_replicates_three_ways_with_min_isr_two() -> None:
    """A production cluster gets replication 3 and min ISR 2 for every topic Flowhook creates."""
    config = _k8s("ConfigMap", "flowhook")["data"]
    assert config["FLOWHOOK_REPLICATION"] == str(BrokerSettings.for_nodes(3).replication)
    assert config["FLOWHOOK_MIN_INSYNC_REPLICAS"] == str(BrokerSettings.for_nodes(3).min_insync_replicas)
