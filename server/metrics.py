"""Prometheus metrics, correct across processes (multiprocess mode).

PROMETHEUS_MULTIPROC_DIR must be set before this module is imported (server.main does it), so every
process (API servers, inference workers, job processes) writes its own files and /metrics sums them.
Gauges about the store are read from SQLite at scrape time instead: they are facts, not per-process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .live.window import live_status
from .store import Store

if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    # Without it every process would count on its own and /metrics would show one process's share.
    raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is not set: start the server with server.main.serve (python -m server)")

# 0.1 ms to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MODEL_HEADER = "x-optiserve-model"
VARIANT_HEADER = "x-optiserve-variant"


def _latency_histogram(name: str, documentation: str, labels: list[str]) -> Histogram:
    return Histogram(name, documentation, labels, buckets=LATENCY_BUCKETS)


FORWARD_SECONDS = _latency_histogram(
    "optiserve_model_forward_seconds",
    "Time of one forward call of a model variant (one batch), in the inference worker: wall time for forwards that "
    "answer requests, the thread's CPU time for shadow forwards (they run at the lowest priority)",
    ["model", "variant", "runtime"],
)
BATCH_SIZE = Histogram(
    "optiserve_batch_size",
    "Requests merged into one forward call by dynamic batching",
    ["model", "variant"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REQUEST_SECONDS = _latency_histogram(
    "optiserve_request_seconds",
    "Time a request spends inside the server, from arrival to response, per endpoint",
    ["endpoint", "model", "variant"],
)
REQUESTS = Counter(
    "optiserve_requests",
    "Requests answered, by endpoint, model, variant and HTTP status code",
    ["endpoint", "model", "variant", "status"],
)
OPTIMIZATION_SECONDS = Histogram(
    "optiserve_optimization_seconds",
    "Duration of background optimization jobs, by outcome (ready or failed)",
    ["outcome"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)

LIVE_COSINE = Histogram(
    "optiserve_live_cosine",
    "Cosine similarity of the optimized variant's outputs to the original's, per compared live request",
    ["model"],
    buckets=(0.0, 0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0),
)
LIVE_ABS_DIFF = Histogram(
    "optiserve_live_max_abs_diff",
    "Largest absolute difference between the two variants' outputs, per compared live request",
    ["model"],
    buckets=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
)
LIVE_AGREEMENT = Counter(
    "optiserve_live_compared_requests",
    "Live requests run on both variants with class-score outputs, by whether every top-1 agreed",
    ["model", "result"],
)
LIVE_DROPPED = Counter(
    "optiserve_live_dropped_observations",
    "Served requests left out of live evidence because the worker's observer was behind",
    ["model"],
)
# Residency of loaded variants, per inference worker (pid): file sizes of the variants its cache holds.
VARIANT_CACHE_BYTES = Gauge(
    "optiserve_variant_cache_bytes",
    "Bytes of model variants an inference worker keeps loaded (their file sizes), per worker pid",
    ["api"],  # /predict or /compare; a label also keeps processes that hold no cache from reporting a 0
    multiprocess_mode="liveall",  # one series per worker (pid label), not a sum across them
)
VARIANT_LOADS = Counter("optiserve_variant_loads", "Variant loads into an inference worker, per worker pid", ["api", "pid"])
VARIANT_EVICTIONS = Counter(
    "optiserve_variant_evictions",
    "Variants an inference worker dropped to stay within --cache-size / --variant-cache-bytes (or never kept: larger than the bound)",
    ["api", "pid"],
)


class StoreCollector:
    """Gauges computed from the store at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        sizes = GaugeMetricFamily(
            "optiserve_model_file_bytes", "Size of each stored model variant file", labels=["model", "variant", "runtime"]
        )
        for model, variant, runtime, size in self.store.variant_sizes():
            sizes.add_metric([model, variant, runtime], size)
        yield sizes
        jobs = GaugeMetricFamily("optiserve_jobs", "Optimization jobs per state", labels=["state"])
        counts = self.store.job_counts()
        for state in ("queued", "optimizing", "ready", "failed"):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield from self._routing_events()
        yield from self._live()

    def _routing_events(self) -> Iterator[Metric]:
        # Counted from the stored events, so they survive restarts and agree with GET /models/{id}/events.
        events = CounterMetricFamily("optiserve_routing_events", "Routing changes per model, kind and trigger (user or guard)", labels=["model", "kind", "trigger"])
        for model, kind, trigger, count in self.store.event_counts():
            events.add_metric([model, kind, trigger], count)
        yield events

    def _live(self) -> Iterator[Metric]:
        agreement = GaugeMetricFamily("optiserve_live_agreement", "Live top-1 agreement over the guard's window (current routing)", labels=["model", "bound"])
        cosine = GaugeMetricFamily("optiserve_live_cosine_mean", "Live mean cosine over the guard's window (current routing)", labels=["model"])
        outside = GaugeMetricFamily("optiserve_input_outside_range_share", "Share of recent input values outside the calibration range", labels=["model", "input"])
        shift = GaugeMetricFamily("optiserve_input_mean_shift", "Recent input mean minus the calibration mean, in calibration std", labels=["model", "input"])
        spread = GaugeMetricFamily("optiserve_input_std_ratio", "Recent input std over the calibration batch's", labels=["model", "input"])
        for info in self.store.list():
            status = live_status(self.store, info)
            fidelity = status.fidelity
            if fidelity.agreement is not None:
                for bound, value in (("estimate", fidelity.agreement), ("lower", fidelity.agreement_lower), ("upper", fidelity.agreement_upper)):
                    agreement.add_metric([info.name, bound], value)
            if fidelity.cosine_mean is not None:
                cosine.add_metric([info.name], fidelity.cosine_mean)
            for drift in status.drift:
                outside.add_metric([info.name, drift.input], drift.outside_range_share)
                shift.add_metric([info.name, drift.input], drift.mean_shift)
                spread.add_metric([info.name, drift.input], drift.std_ratio)
        yield from (agreement, cosine, outside, shift, spread)


def render(store: Store) -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(StoreCollector(store))
    return generate_latest(registry)


class RequestMetricsMiddleware:
    """Times and counts every HTTP request in the API-server process.

    Inference responses carry the model and the variant that served them in headers (set by the
    worker), which is how per-variant request counts are known here, in another process.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = {"status": 500, "model": "", "variant": ""}

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key == MODEL_HEADER.encode():
                        seen["model"] = value.decode()
                    elif key == VARIANT_HEADER.encode():
                        seen["variant"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            # The route template, not the raw path: ids in paths must not explode label cardinality.
            endpoint = getattr(route, "path", "unmatched")
            REQUEST_SECONDS.labels(endpoint, seen["model"], seen["variant"]).observe(time.perf_counter() - started)
            REQUESTS.labels(endpoint, seen["model"], seen["variant"], str(seen["status"])).inc()
