"""deploy/ wires the worker endpoints consistently: probes, metrics port, Prometheus targets,
the autoscalers' targets, and the Compose overlay that makes the example flows work as written.
(Docker and Kubernetes are not available where the tests run: the files are checked against
the project; the Prometheus config itself runs in tests/ops/test_ops_prometheus.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from processor.cli.main import cli
from processor.devtools.stack import read_definition
from processor.flows.loader import check_definition

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
EXAMPLES_OVERLAY = yaml.safe_load((DEPLOY / "compose.examples.yaml").read_text())
K8S = list(yaml.safe_load_all((DEPLOY / "k8s" / "flowhook.yaml").read_text()))
HPA = list(yaml.safe_load_all((DEPLOY / "k8s" / "autoscaling.yaml").read_text()))
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def _workloads() -> list[dict[str, Any]]:
    return [d for d in K8S if d["kind"] in ("StatefulSet", "Deployment")]


def test_k8s_probes_hit_the_worker_endpoint_port() -> None:
    """Every worker pod probes /healthz (liveness, startup) and /readyz (readiness) on the
    container port that FLOWHOOK_METRICS_PORT names, listening beyond loopback."""
    config = next(d for d in K8S if d["kind"] == "ConfigMap")["data"]
    assert config["FLOWHOOK_METRICS_HOST"] == "0.0.0.0"
    for workload in _workloads():
        [container] = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(config["FLOWHOOK_METRICS_PORT"])
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]


def test_autoscalers_target_the_workloads() -> None:
    """Each HorizontalPodAutoscaler scales a workload that deploy/k8s defines, on CPU."""
    workloads = {(d["kind"], d["metadata"]["name"]) for d in _workloads()}
    for hpa in HPA:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in workloads
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert len(HPA) == len(workloads)


def test_prometheus_scrapes_the_compose_workers_on_their_metrics_port() -> None:
    """The shipped scrape config's targets are the Compose services on FLOWHOOK_METRICS_PORT."""
    port = COMPOSE["services"]["processor"]["environment"]["FLOWHOOK_METRICS_PORT"]
    targets = {t for job in PROMETHEUS["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"processor:{port}", f"dispatcher:{port}"}
    assert set(COMPOSE["services"]["dispatcher"]["environment"]) >= {"FLOWHOOK_METRICS_PORT"}
    mount = COMPOSE["services"]["prometheus"]["volumes"][0]
    assert mount.split(":")[0] == "./prometheus" and (DEPLOY / "prometheus" / "alerts.yml").exists()


def test_the_examples_overlay_makes_the_example_flows_work_as_written() -> None:
    """The example flows post to 127.0.0.1:8787: the overlay's receiver listens on that port in
    the dispatcher's network namespace; both workers accept http:// there; the flows validate in
    that context; the commands its comments give are flowhook commands on shipped files."""
    flows = sorted((ROOT / "examples" / "flows").glob("*.yaml"))
    hosts = set()
    for path in flows:
        definition = read_definition(path)
        assert check_definition(definition, source=str(path), allow_http=True).problems == []
        hosts |= {urlsplit(u).netloc for u in re.findall(r"https?://[^\s\"']+", path.read_text())}
    assert hosts == {"127.0.0.1:8787"}
    services = EXAMPLES_OVERLAY["services"]
    receiver = services["receiver"]
    assert receiver["network_mode"] == "service:dispatcher"
    assert receiver["entrypoint"][-2:] == ["processor.devtools.receiver", "8787"]
    assert "__main__" in (ROOT / "processor" / "devtools" / "receiver.py").read_text()
    assert services["processor"]["environment"]["FLOWHOOK_ALLOW_HTTP"] == "1"
    assert services["dispatcher"]["environment"]["FLOWHOOK_ALLOW_NETWORKS"] == "127.0.0.0/8"
    text = (DEPLOY / "compose.examples.yaml").read_text()
    commands = re.findall(r"run --rm processor \\\n#\s+(\w+)", text)
    assert commands == ["flows", "send"] and set(commands) <= set(cli.commands)
    for shipped in re.findall(r"/app/(examples/\S+)", text):
        assert (ROOT / shipped).exists()
