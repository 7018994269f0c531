"""The cheap histogram exposes exactly what prometheus_client's Histogram would (pure)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.ops.metrics import LATENCY_BUCKETS, Buckets


def _samples(registry: CollectorRegistry) -> list[bytes]:
    text = generate_latest(registry).splitlines()
    return [line for line in text if line.startswith(b"h_") and b"_created" not in line]


def test_buckets_match_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = Buckets("h", "latency", LATENCY_BUCKETS)
    ours.register(buckets)
    reference = Histogram("h", "latency", buckets=LATENCY_BUCKETS, registry=theirs)
    for value in (0.0, 0.001, 0.005, 0.0051, 0.02, 0.5, 1.0, 7.5, 30.0, 31.0, 1e9):
        buckets.observe(value)
        reference.observe(value)
    assert _samples(ours) == _samples(theirs) and len(_samples(ours)) == len(LATENCY_BUCKETS) + 3
