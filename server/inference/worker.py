"""The LitAPIs behind POST /predict (and /v2's infer) and POST /compare.

LitServe batches requests for different models together, and one raised exception would fail the
whole batch. So `predict` groups the batch by model (and variant), answers every request with its
own outcome (an error is an outcome), and `encode_response` turns each into a response with its
own status. The workers know no protocol: each request's adapter (adapters/) parses it, makes its
inputs tensors, and shapes its answer or its failure.
"""

import logging
import os
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
from fastapi import HTTPException, Response
from prometheus_client import Histogram

from optimizer_pipeline import NamedOutputs, die_with_parent, harden_torch, pin_malloc_thresholds, quiet_torch_for_good
from wire.contract.models import ModelInfo

from ..jobs import confinement
from .. import metrics
from ..errors import ApiError, JsonResponse, not_found
from .adapters import COMPARE, OIP, PREDICT
from .forward_watchdog import ForwardWatchdog
from .oversized import Refusals, excuse, input_bytes, refusals_dir
from .outcomes import (
    Adapter,
    Outcome,
    Pending,
    Ran,
    Refused,
    cast_to_model,
    check_batch_dimension,
    example_inputs,
    forward_failed,
    not_ready,
    out_of_memory,
)
from ..litserve_bridge import BridgedAPI
from ..live.observer import LiveObserver
from ..live.record_channel import RecordSender
from ..live.routing import Route, choose
from .variant_cache import RESIDENT, RunVariant, VariantCache
from .warm_up import Warmer, marks_dir
from ..settings import Settings
from .shared_tensors import MIN_BYTES, QUEUE_FALLBACK_BYTES, SHM_DIR, SharedResponse, ShmFull, space_for
from ..store import open_store
from .tensors import TensorDecodeError

logger = logging.getLogger("optiserve")
SWITCH_INTERVAL_SECONDS = 0.0005
# How a worker that retires after a request too large for its limits says so: not counted against the model.
OVERSIZED = "oversized"


@dataclass(frozen=True)
class Oversized:
    """A forward call's largest request, larger than the calibration batch (goes with the call to the watchdog)."""

    info: ModelInfo
    size: int
    why: str


class InferenceAPI(BridgedAPI):
    endpoint: str  # set by each subclass: LitServe routes one path to one LitAPI
    adapters: tuple[Adapter, ...]  # the protocols whose requests reach this API
    # Whether requests queued together merge into one forward call: the serving path's throughput.
    batched: bool = True

    def __init__(self, settings: Settings, records: RecordSender) -> None:
        super().__init__(self.endpoint, settings.max_batch_size if self.batched else 1)
        self.settings = settings
        self.records = records  # what a worker writes, the main process writes for it

    def setup(self, device: str) -> None:
        die_with_parent()
        # Ctrl-C reaches every process of the group; the main process stops the workers itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(self.settings.worker_threads)
        harden_torch()
        quiet_torch_for_good()
        pin_malloc_thresholds()  # the allocator the pipeline measured with, or the A/B numbers would not match
        self.store = open_store(self.settings, read_only=True)
        self.keep_held_record(self.settings.held_dir)
        self.warm_marks = marks_dir(self.settings.local_dir).resolve()
        self.warm_marks.mkdir(parents=True, exist_ok=True)  # before confinement: afterwards only this is writable
        RESIDENT.open()  # what a loaded variant holds is measured from /proc/self, closed to it after confinement
        confinement.apply(confinement.for_inference_worker(self.settings, self.store, SHM_DIR, extra_writable=(self.warm_marks,)))
        self.shm = space_for(self.settings.local_dir, self.settings.shm_budget_bytes)
        self.cache = VariantCache(self.settings.cache_size, self.settings.worker_threads, self.settings.variant_bytes_per_worker, self.endpoint)
        self.watchdog = ForwardWatchdog(self.settings.forward_timeout, self._overran)
        self.refusals = Refusals(refusals_dir(self.warm_marks))
        self._pid = str(os.getpid())

    def _overran(self, model_id: str, seconds: float, oversized: object = None) -> None:
        """The watchdog's last act before this worker ends: count the timeout (or, for a request larger
        than the calibration batch, refuse its size from now on), answer this model's requests, and put
        the others this worker holds back on the queue."""
        message = f"the forward call did not finish within {seconds:g} s (OPTISERVE_FORWARD_TIMEOUT); the worker restarts, other models keep serving"
        try:
            if isinstance(oversized, Oversized):
                message += f"; {oversized.why}"
                self.refusals.record(oversized.info, oversized.size, f"ran past the forward deadline ({seconds:g} s)")
            else:
                self.records.timeout(model_id, message)
        finally:
            self.loop.release_held(model_id, HTTPException(504, {"code": "model_timeout", "message": message}))

    def predict(self, x):
        payloads = list(x) if isinstance(x, list) else [x]
        outcomes: list[Union[Outcome, None]] = [None] * len(payloads)
        groups: dict[tuple, list[Pending]] = defaultdict(list)
        for position, payload in enumerate(payloads):
            adapter = next(adapter for adapter in self.adapters if isinstance(payload, adapter.payloads))
            try:
                request = adapter.parse(payload)  # a body too large for the API server to parse
            except Refused as refused:
                outcomes[position] = refused.outcome
                continue
            groups[(request.model, getattr(request, "variant", None))].append(Pending(position, request, adapter))
        for (ref, variant), pending in groups.items():
            try:
                self._serve_group(ref, variant, pending)
            except ApiError as error:
                for item in pending:
                    if item.outcome is None:
                        item.fail(error)
            except Exception as exc:  # a bug or a broken file must fail this group only
                logger.exception("inference failed for model %r", ref)
                failure = ApiError(500, "internal_error", f"inference failed ({type(exc).__name__})")
                for item in pending:
                    if item.outcome is None:
                        item.fail(failure)
            for item in pending:
                outcomes[item.position] = item.outcome
        return outcomes if isinstance(x, list) else outcomes[0]

    def encode_response(self, output: Outcome) -> Response:
        # LitServe builds /predict's route from this annotation. Only /v2 answers (raw bodies, which the
        # OIP route turns back into a Response) can be a SharedResponse.
        headers = {metrics.MODEL_HEADER: output.model, metrics.VARIANT_HEADER: output.variant}
        if output.raw is not None:
            headers.update(output.raw.headers)
            if output.raw.size >= MIN_BYTES:
                try:
                    return SharedResponse(output.status, headers, self.shm.share(output.raw.chunks))
                except ShmFull as exc:
                    if output.raw.size > QUEUE_FALLBACK_BYTES:
                        return JsonResponse({"error": str(exc)}, status_code=503, headers={k: headers[k] for k in (metrics.MODEL_HEADER, metrics.VARIANT_HEADER)})
            return Response(output.raw.body(), status_code=output.status, headers=headers)
        return JsonResponse(output.body, status_code=output.status, headers=headers)

    # ---- one group: requests for the same model (and variant) ----

    def _serve_group(self, ref: str, variant: Union[str, None], pending: list[Pending]) -> None:
        info = self._lookup(ref)
        self.loop.running([item.position for item in pending], info.id)
        decoded = self._decode(info, pending)
        for variants, items in self._assign(info, variant, decoded).items():
            try:
                models = {name: self._load(info, name) for name in variants}
            except ApiError as error:  # e.g. a variant not ready: these requests only
                for item in items:
                    item.fail(error)
                continue
            runs = {name: self._run(info, name, model, items) for name, model in models.items()}
            for item in items:
                if item.outcome is None:
                    item.outcome = item.adapter.answer(info, item, runs)
            self._served(info, items, runs)

    def _assign(self, info: ModelInfo, requested: Union[str, None], pending: list[Pending]) -> dict[tuple[str, ...], list[Pending]]:
        """Which variants run which requests."""
        raise NotImplementedError

    def _served(self, info: ModelInfo, pending: list[Pending], runs: dict[str, Ran]) -> None:
        """After the answers are made, before they are sent."""

    def _lookup(self, ref: str) -> ModelInfo:
        info = self.store.get(ref)
        if info is None:
            raise not_found(ref)
        if not info.health.healthy:
            raise ApiError(
                503, "model_unhealthy", f"model {info.name!r} is marked unhealthy: {info.health.reason}; replace it, or POST /models/{info.id}/reset"
            )
        return info

    def _load(self, info: ModelInfo, variant_name: str, watchdog: Union[ForwardWatchdog, None] = None) -> RunVariant:
        variant = info.variant(variant_name)
        if variant is None:
            raise not_ready(info, variant_name)

        def locate() -> Path:
            # Only on a cache miss: on a shared store this looks the file up and may download it.
            path = self.store.file(info.id, variant.filename)
            if path is None:
                raise not_found(info.id)  # deleted between the lookup and now
            return path

        # Loading warms the model up with a forward call, which gets the same hard limit.
        with (watchdog or self.watchdog).watching(info.id):
            return self.cache.get(info.id, variant.name, variant.version, variant.runtime, locate, lambda: example_inputs(info), variant.size_bytes)

    def _decode(self, info: ModelInfo, pending: list[Pending]) -> list[Pending]:
        """Decode every request's inputs; requests that fail get a 422 outcome and are dropped."""
        decoded = []
        for item in pending:
            try:
                tensors = item.adapter.tensors(info, item.request)
                item.inputs = tuple(
                    cast_to_model(tensor, dtype, name, item.casts)
                    for tensor, dtype, name in zip(tensors, info.summary.input_dtypes, info.summary.inputs)
                )
                check_batch_dimension(item.inputs)
            except Exception as exc:  # whatever a request holds, it fails that request alone
                message = str(exc) if isinstance(exc, TensorDecodeError) else f"the inputs could not be decoded ({type(exc).__name__}: {str(exc)[:300]})"
                item.fail(ApiError(422, "invalid_input", message), info.name)
                continue
            try:
                self.refusals.check(info, item.inputs)
            except ApiError as error:  # a size that failed this model before
                item.fail(error, info.name)
                continue
            decoded.append(item)
        return decoded

    def _run(self, info: ModelInfo, variant_name: str, model: RunVariant, pending: list[Pending]) -> Ran:
        """Run requests with the same input signature as one batch; fall back to one by one on failure."""
        ran = Ran()
        by_signature: dict[tuple, list[Pending]] = defaultdict(list)
        for item in pending:
            if item.outcome is None:  # e.g. it already failed on the other variant of a comparison
                by_signature[item.signature()].append(item)
        for group in by_signature.values():
            try:
                self._forward(info, variant_name, model, group, ran)
            except Exception as exc:
                if len(group) == 1:
                    group[0].fail(self._forward_failed(info, group[0], exc), info.name)
                    continue
                for item in group:  # isolate the request that breaks the model
                    try:
                        self._forward(info, variant_name, model, [item], ran)
                    except Exception as single_exc:
                        item.fail(self._forward_failed(info, item, single_exc), info.name)
        return ran

    def _forward_failed(self, info: ModelInfo, item: Pending, exc: Exception) -> ApiError:
        if not out_of_memory(exc):
            return forward_failed(info, item, exc)
        cap = self.settings.worker_memory_bytes / 2**30
        message = (
            f"model {info.name!r} tried to allocate more memory than an inference worker may map "
            f"(OPTISERVE_WORKER_MEMORY_BYTES, {cap:g} GiB beyond torch itself); the worker restarts"
        )
        too_large = excuse(info, item.inputs)
        # The worker answers its batch and then makes way for a fresh one: a failed allocation can
        # leave a heap fragmented or a library's state half-built.
        if too_large is not None:
            self.refusals.record(info, input_bytes(item.inputs), f"went over the memory cap ({cap:g} GiB)")
            self.loop.retire_after_batch(OVERSIZED, info.id, f"{message}; {too_large}")
            return ApiError(507, "out_of_memory", f"{message}; {too_large}")
        message += ", and this counts towards the model's health"
        self.loop.retire_after_batch("out_of_memory", info.id, message)
        return ApiError(507, "out_of_memory", message)

    def _forward(self, info: ModelInfo, variant_name: str, model: RunVariant, group: list[Pending], ran: Ran) -> None:
        inputs = tuple(torch.cat(parts) if len(group) > 1 else parts[0] for parts in zip(*(item.inputs for item in group)))
        largest = max(group, key=lambda item: input_bytes(item.inputs))
        # Past the deadline, the group's largest request decides whether the model answers for it.
        oversized = Oversized(info, input_bytes(largest.inputs), why) if (why := excuse(info, largest.inputs)) else None
        outputs, seconds = self._timed_forward(info, variant_name, model, inputs, self.watchdog, context=oversized)
        _batch_sizes(info, variant_name).observe(len(group))
        metrics.WORKER_FORWARDS.labels(self.endpoint, self._pid).inc()
        total = sum(item.size for item in group)
        if len(group) > 1 and any(t.dim() == 0 or t.shape[0] != total for _, t in outputs):
            raise ValueError("outputs do not keep the batch as their first dimension; a merged batch cannot be split")
        offset = 0
        for item in group:
            ran.outputs[item.position] = [(name, t[offset : offset + item.size]) for name, t in outputs] if len(group) > 1 else outputs
            ran.milliseconds[item.position] = seconds * 1000
            offset += item.size

    def _timed_forward(
        self, info: ModelInfo, variant_name: str, model: RunVariant, inputs: tuple[torch.Tensor, ...], watchdog: ForwardWatchdog,
        clock: Callable[[], float] = time.perf_counter, context: object = None,
    ) -> tuple[NamedOutputs, float]:
        started = clock()
        with watchdog.watching(info.id, context):
            outputs = model(inputs)
        seconds = clock() - started
        _forward_seconds(info, variant_name).observe(seconds)
        return outputs, seconds


def _batch_sizes(info: ModelInfo, variant_name: str) -> Histogram:
    return metrics.BATCH_SIZE.labels(info.name, variant_name)


def _forward_seconds(info: ModelInfo, variant_name: str) -> Histogram:
    return metrics.FORWARD_SECONDS.labels(info.name, variant_name, info.variant(variant_name).runtime)


class PredictAPI(InferenceAPI):
    endpoint = "/predict"
    adapters = (PREDICT, OIP)  # /v2 infers (REST and gRPC) share these workers, their batching and deadlines
    request_schema = PREDICT.schema  # the JSON body of the API's own route

    def setup(self, device: str) -> None:
        super().setup(device)
        # The observer thread holds the GIL for its Python work; the serving thread waits for it at
        # most this long (the default 5 ms is longer than a whole small request).
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        # Shadow forwards run on the observer's thread, under a time limit of their own.
        self.shadow_watchdog = ForwardWatchdog(self.settings.forward_timeout, self._overran)
        self.observer = LiveObserver(self.store, self._shadow_forward, self.records)
        # Warm before ready: new and replaced variants are loaded and run here, off the serving thread.
        # Not in /compare workers: they would keep the same bytes loaded again (a share of
        # variant_cache_bytes each), for an endpoint meant for spot checks.
        self.warm_watchdog = ForwardWatchdog(self.settings.forward_timeout, self._overran)
        Warmer(self.warm_marks, self.store.list, self._warm).start()

    def _warm(self, info: ModelInfo, variant_name: str) -> None:
        self._load(info, variant_name, self.warm_watchdog)
        # A histogram's first sample for new labels lays out its buckets in the multiprocess files
        # (0.15-0.45 ms each here): done now, it stays out of the variant's first request.
        _batch_sizes(info, variant_name)
        _forward_seconds(info, variant_name)

    def _assign(self, info: ModelInfo, requested: Union[str, None], pending: list[Pending]) -> dict[tuple[str, ...], list[Pending]]:
        """An explicit variant wins; otherwise the model's routing policy places each request."""
        available = {variant.name for variant in info.variants}
        assigned: dict[tuple[str, ...], list[Pending]] = defaultdict(list)
        for item in pending:
            item.route = Route(requested) if requested else choose(info.routing, available, info.default_variant, item.request.routing_key)
            assigned[(item.route.serve,)].append(item)
        return assigned

    def _served(self, info: ModelInfo, pending: list[Pending], runs: dict[str, Ran]) -> None:
        (ran,) = runs.values()
        served = [item for item in pending if item.outcome is not None and item.outcome.status == 200]
        self.observer.observe(
            info, [item.inputs for item in served], [item.route for item in served],
            [ran.outputs[item.position] for item in served], [ran.milliseconds[item.position] for item in served],
        )

    def answered(self) -> None:
        self.observer.settle()

    def _shadow_forward(self, info: ModelInfo, variant: str, inputs: tuple[torch.Tensor, ...]) -> tuple[NamedOutputs, float]:
        model = self._load(info, variant, self.shadow_watchdog)
        # The observer thread runs at nice 19, so its wall time measures the wait for a core under load,
        # not the variant: a shadow forward is timed in its thread's CPU time (live/window.py labels it).
        outputs, seconds = self._timed_forward(info, variant, model, inputs, self.shadow_watchdog, clock=time.thread_time)
        return outputs, seconds * 1000


class CompareAPI(InferenceAPI):
    endpoint = "/compare"
    batched = False  # an A/B view of one request, not a throughput path
    adapters = (COMPARE,)
    request_schema = COMPARE.schema

    def _assign(self, info: ModelInfo, requested: Union[str, None], pending: list[Pending]) -> dict[tuple[str, ...], list[Pending]]:
        return {("original", "optimized"): pending}


def is_inference_path(path: str) -> bool:
    """Routes that run model code, and so get the arrival-to-answer deadline."""
    return path in (PredictAPI.endpoint, CompareAPI.endpoint) or (path.startswith("/v2/models/") and path.endswith("/infer"))


