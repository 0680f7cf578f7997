"""Prometheus metrics of one app, on a registry of its own (two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    def __init__(self, texts_encoded=lambda: 0, ready=lambda: False) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bookmatch_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bookmatch_request_errors",
            "Requests answered with a 4xx or 5xx status, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bookmatch_request_latency_seconds",
            "Time from request to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bookmatch_requests_in_flight",
            "Requests received and not yet answered (a draining server shows them finish).",
            registry=self.registry,
        )
        self.pairs_scored = Counter("bookmatch_pairs_scored", "Pairs scored (all modes).", registry=self.registry)
        self.batch_pairs = Histogram(
            "bookmatch_batch_pairs",
            "Pairs per model call of the dynamic batcher.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "bookmatch_batch_requests",
            "Requests merged into one model call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        encoded = Gauge(
            "bookmatch_texts_encoded",
            "Texts the bi-encoder encoded (cache misses) since start.",
            registry=self.registry,
        )
        encoded.set_function(lambda: float(texts_encoded()))
        ready_gauge = Gauge("bookmatch_ready", "1 once the models are loaded.", registry=self.registry)
        ready_gauge.set_function(lambda: 1.0 if ready() else 0.0)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, n_pairs: int, n_requests: int) -> None:
        self.pairs_scored.inc(n_pairs)
        self.batch_pairs.observe(n_pairs)
        self.batch_requests.observe(n_requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
