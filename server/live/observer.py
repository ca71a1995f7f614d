"""Live evidence, gathered in each /predict worker, off the forward path and after the answers.

The serving thread hands each group of answered requests over once (`observe`), and works on them
once the batch's answers have left (`settle`): one LiveSample per request goes to the main
process, which records it and lets the guard judge the window; when it trips, the original takes
all the traffic in every worker. A group's drift statistics (its inputs against the calibration
batch) are a few tensor operations over all its requests. A thread of its own at the lowest
priority runs shadow forwards and compares the two variants' outputs, takes a model's first group
(its calibration batch is read then), and sends the samples of comparisons, and those the serving
thread left when no further batch came.

Why plain groups stay on the serving thread: the observer thread runs at nice 19, and while it
holds the GIL waiting for a core, the serving thread waits with it. Handing every request to that
thread cost the mid ResNet's worker about 0.17 ms of CPU a request at concurrency 8, and GIL waits
besides."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from optimizer_pipeline import NamedOutputs, compare_outputs, load_calibration
from wire.contract.live import LiveSample
from wire.contract.models import ModelInfo

from .. import metrics
from .drift import CalibrationRange, moments
from .record_channel import RecordSender
from .routing import Route
from ..store import Store

logger = logging.getLogger("optiserve")

FLUSH_SECONDS = 0.2
MAX_QUEUED = 1024
# Shadowed requests hold their inputs until their turn; past this, new observations are dropped (and counted).
MAX_QUEUED_BYTES = 256 * 2**20

# (model, variant, inputs) -> (outputs, milliseconds): a forward call under the worker's time limit.
ShadowForward = Callable[[ModelInfo, str, tuple[torch.Tensor, ...]], tuple[NamedOutputs, float]]


@dataclass
class Observation:
    """One group's answered requests (one forward call's, usually): their statistics are computed together."""

    info: ModelInfo
    inputs: list[tuple[torch.Tensor, ...]]  # per request
    routes: list[Route]
    outputs: list[NamedOutputs]  # per request; empty for a request without a shadow (nothing compares them)
    milliseconds: list[float]
    nbytes: int = 0


@dataclass
class _Pending:
    samples: list[tuple[str, LiveSample]] = field(default_factory=list)
    compared: set[str] = field(default_factory=set)  # model ids with a comparison in this flush
    since: float = field(default_factory=time.monotonic)


class LiveObserver:
    def __init__(self, store: Store, shadow_forward: ShadowForward, records: RecordSender) -> None:
        self.store = store  # read-only here: samples go to the main process, which writes them
        self.shadow_forward = shadow_forward
        self.records = records
        self._queue: queue.Queue[Observation] = queue.Queue(MAX_QUEUED)
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._pending = _Pending()  # under _lock: both threads add samples; this thread sends them
        self._ranges: dict[str, list[CalibrationRange | None]] = {}
        self._answered: list[tuple] = []  # groups observed in the batch being answered (serving thread only)
        threading.Thread(target=self._run, name="live-observer", daemon=True).start()

    def observe(
        self, info: ModelInfo, inputs: list[tuple[torch.Tensor, ...]], routes: list[Route], outputs: list[NamedOutputs], milliseconds: list[float]
    ) -> None:
        """A group of answered requests (per request: inputs, route, outputs, forward ms), kept until
        `settle`: its answers are not sent yet, and their latency must not pay for the statistics."""
        if inputs:
            self._answered.append((info, inputs, routes, outputs, milliseconds))

    def settle(self) -> None:
        """On the serving thread, once the batch's answers have left: the groups `observe` kept, and
        the samples pending once FLUSH_SECONDS have passed (sent from here if that needs no wait)."""
        answered, self._answered = self._answered, []
        for group in answered:
            try:
                self._settle(*group)
            except Exception:  # evidence is best-effort; serving must never depend on it
                logger.exception("live observation of model %r failed", group[0].name)
        with self._lock:
            pending = self._pending
            if not pending.samples or pending.compared or time.monotonic() - pending.since < FLUSH_SECONDS:
                return
            self._pending = _Pending()
        try:
            sent = self.records.live_now(pending.samples)
        except Exception:
            logger.exception("recording live samples failed")
            return
        if not sent:
            with self._lock:  # the observer thread sends them, waiting for the main process's writer
                self._pending.samples[:0] = pending.samples

    def _settle(
        self, info: ModelInfo, inputs: list[tuple[torch.Tensor, ...]], routes: list[Route], outputs: list[NamedOutputs], milliseconds: list[float]
    ) -> None:
        ranges = self._ranges.get(info.id)
        if ranges is not None and not any(route.shadow for route in routes):
            with self._lock:  # sent by the observer thread: a send may wait for the main process's writer
                self._pending.samples.extend(self._samples(info, ranges, inputs, routes, milliseconds))
            return
        nbytes = sum(t.numel() * t.element_size() for tensors, route in zip(inputs, routes) if route.shadow for t in tensors)
        with self._lock:
            if self._queued_bytes + nbytes > MAX_QUEUED_BYTES:
                metrics.LIVE_DROPPED.labels(info.name).inc(len(inputs))
                return
            self._queued_bytes += nbytes
        kept = [output if route.shadow else [] for output, route in zip(outputs, routes)]
        try:
            self._queue.put_nowait(Observation(info, inputs, routes, kept, milliseconds, nbytes))
        except queue.Full:
            self._release(nbytes)
            metrics.LIVE_DROPPED.labels(info.name).inc(len(inputs))

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._queued_bytes -= nbytes

    def _run(self) -> None:
        # Linux schedules threads one by one: at the lowest priority, shadow forwards and comparisons
        # get the CPU the serving thread leaves, instead of taking turns with it.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            try:
                observation = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                # What the serving thread left pending: it sends them itself after its next batch,
                # unless none comes (it holds no GIL then, whatever this thread's priority).
                self._add([], set(), 2 * FLUSH_SECONDS)
                continue
            try:
                self._sample(observation)
            except Exception:  # evidence is best-effort; serving must never depend on it
                logger.exception("live observation of model %r failed", observation.info.name)
            finally:
                self._release(observation.nbytes)

    def _sample(self, observation: Observation) -> None:
        info = observation.info
        ranges = self._ranges.get(info.id)
        if ranges is None:
            ranges = self._ranges[info.id] = self._calibration_ranges(info)
        samples = self._samples(info, ranges, observation.inputs, observation.routes, observation.milliseconds)
        kept, compared = [], set()
        for (model_id, sample), inputs, route, outputs in zip(samples, observation.inputs, observation.routes, observation.outputs):
            if route.shadow is not None:
                try:
                    self._shadow(info, route, inputs, outputs, sample)
                except Exception:  # this request's evidence only; the group's other samples still count
                    logger.exception("the shadow comparison of model %r failed", info.name)
                    continue
                compared.add(model_id)
            kept.append((model_id, sample))
        self._add(kept, compared)

    def _samples(
        self, info: ModelInfo, ranges: list[CalibrationRange | None], inputs: list[tuple[torch.Tensor, ...]], routes: list[Route], milliseconds: list[float]
    ) -> list[tuple[str, LiveSample]]:
        drifts = moments(ranges, inputs)
        return [
            (info.id, LiveSample(revision=info.routing_revision, served=route.serve, served_ms=ms, inputs=drift))
            for route, ms, drift in zip(routes, milliseconds, drifts)
        ]

    def _shadow(self, info: ModelInfo, route: Route, inputs: tuple[torch.Tensor, ...], served: NamedOutputs, sample: LiveSample) -> None:
        assert route.shadow is not None
        other, milliseconds = self.shadow_forward(info, route.shadow, inputs)
        outputs = {route.serve: served, route.shadow: other}
        fidelity = compare_outputs(outputs["original"], outputs["optimized"])
        sample.other, sample.other_ms = route.shadow, milliseconds
        sample.cosine, sample.max_abs_diff = fidelity.cosine, fidelity.max_abs_error
        sample.agree = None if fidelity.agreement is None else fidelity.agreement == 1.0
        metrics.LIVE_COSINE.labels(info.name).observe(fidelity.cosine)
        metrics.LIVE_ABS_DIFF.labels(info.name).observe(fidelity.max_abs_error)
        if sample.agree is not None:
            metrics.LIVE_AGREEMENT.labels(info.name, "agree" if sample.agree else "disagree").inc()

    def _add(self, samples: list[tuple[str, LiveSample]], compared: set[str], after: float = FLUSH_SECONDS) -> None:
        """Keep `samples`; send what is pending once `after` seconds have passed since the last send."""
        with self._lock:
            pending = self._pending
            pending.samples.extend(samples)
            pending.compared |= compared
            if not pending.samples or time.monotonic() - pending.since < after:
                return
            self._pending = _Pending()
        try:
            # The main process writes them and judges the guard of the models compared (record_channel.py).
            self.records.live(pending.samples, pending.compared)
        except Exception:
            logger.exception("recording live samples failed")

    # ---- drift ----

    def _calibration_ranges(self, info: ModelInfo) -> list[CalibrationRange | None]:
        try:
            path = self.store.file(info.id, "calibration.bin")
            if path is None:
                raise FileNotFoundError(f"model {info.id} has no stored calibration batch")
            batch = load_calibration(path, info.summary.inputs)
        except Exception:
            logger.exception("the calibration batch of model %r could not be read for drift statistics", info.name)
            return [None] * len(info.summary.inputs)
        ranges: list[CalibrationRange | None] = []
        for tensor in batch.inputs:
            values = tensor.detach().reshape(-1).double()
            if values.numel() == 0 or tensor.dtype == torch.bool:
                ranges.append(None)
                continue
            std = float(values.std()) if values.numel() > 1 else 0.0
            ranges.append(CalibrationRange(float(values.min()), float(values.max()), float(values.mean()), std if std > 0 else 1.0))
        return ranges

