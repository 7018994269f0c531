"""The workers' Prometheus metrics: one registry per worker process, cheap on the hot path.

Counters the hot path touches are `Tally`s: a plain dict per metric, updated with one dict
operation per count (or once per batch, see `Tally.add_counts`) and turned into Prometheus
samples only when `/metrics` is scraped. The workers run one event loop, and the scrape runs
in that loop too, so no lock is needed. Gauges that describe the worker's state (in-flight
requests, lag, breakers, retry-tier depth) are computed at scrape time from callbacks, so
the hot path pays nothing for them.

Names (SPEC §5 "Worker endpoints"): `flowhook_events_total{topic,outcome}` and
`flowhook_runs_total{flow,status}` (processor), `flowhook_deliveries_total{flow,step,outcome}`
and `flowhook_delivery_seconds` (dispatcher), `flowhook_consumer_lag{topic,partition}` (both),
and the ones listed in `METRIC_NAMES`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["METRIC_NAMES", "Buckets", "GaugeCallback", "Tally", "WorkerMetrics"]

# Seconds: from a fast loopback answer to the default 10 s timeout.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Every metric a worker may expose (the docs' metrics table lists the same names).
METRIC_NAMES: Final = (
    "flowhook_events_total",
    "flowhook_runs_total",
    "flowhook_webhooks_due_total",
    "flowhook_deliveries_total",
    "flowhook_delivery_seconds",
    "flowhook_requests_in_flight",
    "flowhook_retry_tier_depth",
    "flowhook_breaker_open",
    "flowhook_secret_missing_total",
    "flowhook_consumer_lag",
    "flowhook_invalid_records_total",
    "flowhook_flows_refused",
    "flowhook_ready",
)

Labels = tuple[str, ...]


class Tally(Collector):
    """A labelled counter kept as a plain dict; exposed as a Prometheus counter."""

    def __init__(self, name: str, documentation: str, labels: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[Labels, float] = {}

    def add(self, key: Labels, amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def add_counts(self, counts: Mapping[Labels, int]) -> None:
        """Add a batch's counts at once (one dict update per distinct label set)."""
        for key, amount in counts.items():
            self.add(key, amount)

    def get(self, *key: str) -> float:
        return self.values.get(tuple(key), 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        yield family


class GaugeCallback(Collector):
    """A labelled gauge whose samples a callback gives at scrape time."""

    def __init__(
        self, name: str, documentation: str, labels: Iterable[str],
        samples: Callable[[], Iterable[tuple[Labels, float]]],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.samples():
            family.add_metric(list(key), value)
        yield family


class Buckets(Collector):
    """A histogram without labels, kept as plain counts; exposed as a Prometheus histogram.

    prometheus_client's Histogram takes a lock and walks its buckets in Python on every
    observation (about 1.5% of the dispatcher's CPU, once per request); here an observation
    is one `bisect` and two additions. The workers' single event loop needs no lock."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for bound, count in zip([*map(_bound_text, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)
        yield family


def _bound_text(bound: float) -> str:
    return repr(float(bound))


def _nothing() -> Iterable[tuple[Labels, float]]:
    return ()


class WorkerMetrics:
    """Everything one worker exposes on `/metrics`. `role` is "processor" or "dispatcher"."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        # Both workers
        self.invalid = self._tally(
            "flowhook_invalid_records_total", "Records copied to the invalid-input topic, by source topic",
            ["topic"],
        )
        self._lag: Callable[[], Iterable[tuple[Labels, float]]] = _nothing
        self._gauge("flowhook_consumer_lag", "Records behind the end of each assigned partition",
                    ["topic", "partition"], lambda: self._lag())
        self._ready: Callable[[], bool] = lambda: False
        self._gauge("flowhook_ready", "1 when /readyz answers 200", [],
                    lambda: [((), 1.0 if self._ready() else 0.0)])
        if role == "processor":
            self._processor_metrics()
        else:
            self._dispatcher_metrics()

    def _processor_metrics(self) -> None:
        self.events = self._tally(
            "flowhook_events_total", "Input records read, by topic and outcome (accepted or invalid)",
            ["topic", "outcome"],
        )
        self.runs = self._tally("flowhook_runs_total", "Run lifecycle records written, by flow and status",
                                ["flow", "status"])
        self.webhooks_due = self._tally("flowhook_webhooks_due_total", "Webhook-due records emitted, by flow",
                                        ["flow"])
        self.refused: dict[str, str] = {}  # flow id -> why this worker refused its definition
        self._gauge("flowhook_flows_refused", "Flow definitions this worker refused (1 per flow)", ["flow"],
                    lambda: [((flow,), 1.0) for flow in self.refused])

    def _dispatcher_metrics(self) -> None:
        self.deliveries = self._tally(
            "flowhook_deliveries_total", "Delivery result records written, by flow, step and outcome",
            ["flow", "step", "outcome"],
        )
        self.delivery_seconds = Buckets(
            "flowhook_delivery_seconds", "HTTP latency of delivery attempts (request sent to response read)",
            LATENCY_BUCKETS,
        )
        self.registry.register(self.delivery_seconds)
        self.in_flight = 0  # requests being sent now; the dispatcher keeps it
        self._gauge("flowhook_requests_in_flight", "HTTP requests in flight", [],
                    lambda: [((), float(self.in_flight))])
        self._breakers: Callable[[], Iterable[tuple[Labels, float]]] = _nothing
        self._gauge("flowhook_breaker_open", "1 while the destination's circuit breaker is open",
                    ["destination"], lambda: self._breakers())
        # Labelled by the secret's NAME (FLOWHOOK_SECRET_<NAME>); a value is never known here.
        self.secret_missing = self._tally(
            "flowhook_secret_missing_total", "Tries deferred because a secret they need is not set, by name",
            ["secret"],
        )
        self._retry_depth: Callable[[], Iterable[tuple[Labels, float]]] = _nothing
        self._gauge("flowhook_retry_tier_depth",
                    "Retries waiting in each tier (not yet fetched, or fetched and not yet due)",
                    ["topic"], lambda: self._retry_depth())

    # -- wiring the scrape-time callbacks ---------------------------------------------
    def on_ready(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def on_lag(self, samples: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self._lag = samples

    def on_breakers(self, samples: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self._breakers = samples

    def on_retry_depth(self, samples: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self._retry_depth = samples

    # -- helpers -----------------------------------------------------------------------
    def _tally(self, name: str, documentation: str, labels: list[str]) -> Tally:
        tally = Tally(name, documentation, labels)
        self.registry.register(tally)
        return tally

    def _gauge(self, name: str, documentation: str, labels: list[str],
               samples: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self.registry.register(GaugeCallback(name, documentation, labels, samples))
