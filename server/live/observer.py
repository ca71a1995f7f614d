"""Live evidence, gathered in each /predict worker on a thread of its own, off the response path.

The serving thread hands every answered request over (`observe` only enqueues). This thread then
runs the shadow forward where the route asks for one, compares the two variants' outputs, measures
the inputs against the calibration batch, and sends one LiveSample per request to the main process,
which records it and lets the guard judge the window: when it trips, the original takes all the
traffic in every worker.
"""

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
from wire.contract.live import InputMoments, LiveSample
from wire.contract.models import ModelInfo

from .. import metrics
from .record_channel import RecordSender
from .routing import Route
from ..store import Store

logger = logging.getLogger("optiserve")

FLUSH_SECONDS = 0.2
MAX_QUEUED = 1024
# Shadowed requests hold their inputs until their turn; past this, new observations are dropped (and counted).
MAX_QUEUED_BYTES = 256 * 2**20
# Drift statistics of a large input come from an even subsample of its values.
DRIFT_VALUES = 65536

# (model, variant, inputs) -> (outputs, milliseconds): a forward call under the worker's time limit.
ShadowForward = Callable[[ModelInfo, str, tuple[torch.Tensor, ...]], tuple[NamedOutputs, float]]


@dataclass
class Observation:
    info: ModelInfo
    inputs: tuple[torch.Tensor, ...]
    route: Route
    outputs: NamedOutputs
    milliseconds: float
    nbytes: int = 0


@dataclass(frozen=True)
class CalibrationRange:
    low: float
    high: float
    mean: float
    std: float


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
        self._ranges: dict[str, list[CalibrationRange | None]] = {}
        threading.Thread(target=self._run, name="live-observer", daemon=True).start()

    def observe(self, info: ModelInfo, inputs: tuple[torch.Tensor, ...], route: Route, outputs: NamedOutputs, milliseconds: float) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in inputs) if route.shadow else 0
        with self._lock:
            if self._queued_bytes + nbytes > MAX_QUEUED_BYTES:
                metrics.LIVE_DROPPED.labels(info.name).inc()
                return
            self._queued_bytes += nbytes
        try:
            self._queue.put_nowait(Observation(info, inputs, route, outputs if route.shadow else [], milliseconds, nbytes))
        except queue.Full:
            self._release(nbytes)
            metrics.LIVE_DROPPED.labels(info.name).inc()

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._queued_bytes -= nbytes

    def _run(self) -> None:
        # Linux schedules threads one by one: at the lowest priority, shadow forwards and comparisons
        # get the CPU the serving thread leaves, instead of taking turns with it.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        pending = _Pending()
        while True:
            try:
                observation = self._queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                observation = None
            if observation is not None:
                try:
                    self._sample(observation, pending)
                except Exception:  # evidence is best-effort; serving must never depend on it
                    logger.exception("live observation of model %r failed", observation.info.name)
                finally:
                    self._release(observation.nbytes)
            if pending.samples and time.monotonic() - pending.since >= FLUSH_SECONDS:
                try:
                    self._flush(pending)
                except Exception:
                    logger.exception("recording live samples failed")
                pending = _Pending()

    def _sample(self, observation: Observation, pending: _Pending) -> None:
        info, route = observation.info, observation.route
        sample = LiveSample(
            revision=info.routing_revision,
            served=route.serve,
            served_ms=observation.milliseconds,
            inputs=self._moments(info, observation.inputs),
        )
        if route.shadow is not None:
            other, milliseconds = self.shadow_forward(info, route.shadow, observation.inputs)
            outputs = {route.serve: observation.outputs, route.shadow: other}
            fidelity = compare_outputs(outputs["original"], outputs["optimized"])
            sample.other, sample.other_ms = route.shadow, milliseconds
            sample.cosine, sample.max_abs_diff = fidelity.cosine, fidelity.max_abs_error
            sample.agree = None if fidelity.agreement is None else fidelity.agreement == 1.0
            metrics.LIVE_COSINE.labels(info.name).observe(fidelity.cosine)
            metrics.LIVE_ABS_DIFF.labels(info.name).observe(fidelity.max_abs_error)
            if sample.agree is not None:
                metrics.LIVE_AGREEMENT.labels(info.name, "agree" if sample.agree else "disagree").inc()
            pending.compared.add(info.id)
        pending.samples.append((info.id, sample))

    def _flush(self, pending: _Pending) -> None:
        # The main process writes them and judges the guard of the models compared (record_channel.py).
        self.records.live(pending.samples, pending.compared)

    # ---- drift ----

    def _moments(self, info: ModelInfo, inputs: tuple[torch.Tensor, ...]) -> list[InputMoments]:
        ranges = self._ranges.get(info.id)
        if ranges is None:
            ranges = self._ranges[info.id] = self._calibration_ranges(info)
        moments = []
        for tensor, known in zip(inputs, ranges):
            if known is None:
                return moments  # inputs after one without a range keep no statistics either (positions must line up)
            values = tensor.detach().reshape(-1)
            if values.numel() > DRIFT_VALUES:
                values = values[:: values.numel() // DRIFT_VALUES]
            values = values.double()
            z = (values - known.mean) / known.std
            outside = int(((values < known.low) | (values > known.high)).sum())
            moments.append(InputMoments(values=values.numel(), outside=outside, z_sum=float(z.sum()), z_square_sum=float((z * z).sum())))
        return moments

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
