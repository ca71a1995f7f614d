"""GET /metrics: every process's multiprocess files summed, plus gauges read from the store at scrape
time (they are facts, not per-process); and the middleware that times every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..live.window import live_status
from ..metrics import MODEL_HEADER, REQUEST_SECONDS, REQUESTS, VARIANT_HEADER
from ..store import Store


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
