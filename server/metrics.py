"""Prometheus metrics, correct across processes (multiprocess mode): what every process counts.
What /metrics serves, and the HTTP middleware that times requests, are in http/metrics_page.py.

PROMETHEUS_MULTIPROC_DIR must be set before this module is imported (server.main does it), so every
process (API servers, inference workers, job processes) writes its own files and /metrics sums them.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram

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
WORKER_FORWARDS = Counter(
    "optiserve_worker_forwards",
    "Forward calls that answered requests, per inference worker pid: how traffic spreads over the workers "
    "(the lowest-numbered idle worker takes the next batch)",
    ["api", "pid"],
)
# Residency of loaded variants, per inference worker (pid): what the variants its cache holds took once loaded.
VARIANT_CACHE_BYTES = Gauge(
    "optiserve_variant_cache_bytes",
    "Bytes of model variants an inference worker keeps loaded (the resident memory each added once loaded, at least its file size), per worker pid",
    ["api"],  # /predict or /compare; a label also keeps processes that hold no cache from reporting a 0
    multiprocess_mode="liveall",  # one series per worker (pid label), not a sum across them
)
VARIANT_LOADS = Counter("optiserve_variant_loads", "Variant loads into an inference worker, per worker pid", ["api", "pid"])
VARIANT_EVICTIONS = Counter(
    "optiserve_variant_evictions",
    "Variants an inference worker dropped to stay within --cache-size / --variant-cache-bytes (or never kept: larger than the bound)",
    ["api", "pid"],
)
