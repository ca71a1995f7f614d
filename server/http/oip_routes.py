"""Open Inference Protocol v2 over REST (KServe, Triton, MLServer): the route table and thin handlers.

Versions are optiserve's variants, `original` and `optimized`; without one, a request gets what
/predict serves by default. Bodies are read raw, never through a JSON body parser: tritonclient
sends binary tensors and no Content-Type. Inference goes to the /predict workers through the
bridge, so it shares their batching, deadlines and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from wire import ModelMetadata
from wire.codec import HEADER_LENGTH, WireError
from wire.schemas import InferenceErrorResponse, MetadataTensor, ModelReady, RepositoryEntry, ServerMetadata
from wire.contract.models import ModelInfo
from wire.contract.routing import VariantName

from ..errors import ApiError, JsonResponse, not_found
from ..litserve_bridge import QueueBridge
from ..inference.adapters.oip import InferCall, RawInfer, decode
from .predict_route import INLINE_PARSE_BYTES, ROUTING_KEY_HEADER, carry, read_body, release, too_large
from ..inference.warm_up import warm_everywhere
from ..inference.shared_tensors import MIN_BYTES, QUEUE_FALLBACK_BYTES, SharedArray, SharedResponse, SharedSpace, ShmFull
from ..inference.tensors import datatype_of
from ..store import Store

VARIANTS = ("original", "optimized")
ERRORS = {status: {"model": InferenceErrorResponse} for status in (400, 401, 404, 413, 503)}


class OipRoutes:
    def __init__(
        self,
        store: Store,
        bridge: QueueBridge,
        workers_ready: Callable[[], bool],
        space: SharedSpace,
        max_json_bytes: int,
        warm_marks: Path | None = None,
    ) -> None:
        self.store = store
        self.warm_marks = warm_marks  # where the workers say what they have warmed; None: no warm-up check
        self.space = space
        self.max_json_bytes = max_json_bytes
        self.bridge = bridge
        self.workers_ready = workers_ready

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v2", default_response_class=JsonResponse, responses=ERRORS, tags=["Open Inference Protocol v2"])
        table = [
            ("GET", "", self.server_metadata, ServerMetadata),
            ("GET", "/health/live", self.live, None),
            ("GET", "/health/ready", self.ready, None),
            ("GET", "/models/{model}", self.model_metadata, ModelMetadata),
            ("GET", "/models/{model}/versions/{version}", self.model_metadata, ModelMetadata),
            ("GET", "/models/{model}/ready", self.model_ready, ModelReady),
            ("GET", "/models/{model}/versions/{version}/ready", self.model_ready, ModelReady),
            ("POST", "/models/{model}/infer", self.infer, None),
            ("POST", "/models/{model}/versions/{version}/infer", self.infer, None),
            ("POST", "/repository/index", self.repository_index, list[RepositoryEntry]),
        ]
        for method, path, handler, response_model in table:
            router.add_api_route(path, handler, methods=[method], response_model=response_model)
        return router

    async def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="optiserve", version=package_version("optiserve"), extensions=["binary_tensor_data", "model_repository"])

    async def live(self) -> dict[str, bool]:
        return {"live": True}

    async def ready(self) -> dict[str, bool]:
        if not self.workers_ready():
            raise ApiError(503, "not_ready", "inference workers are still starting")
        return {"ready": True}

    async def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        info = await self._model(model, version)
        summary = info.summary
        return ModelMetadata(
            name=info.name,
            versions=[variant.name for variant in info.variants],
            platform="pytorch_export" if summary.format == "exported" else "pytorch_torchscript",
            inputs=_tensors(summary.inputs, summary.input_shapes, summary.input_dtypes),
            # Uploads from before output dtypes were recorded: their outputs go out as float (wire_ready).
            outputs=_tensors(summary.outputs, summary.output_shapes, summary.output_dtypes or ["float32"] * len(summary.outputs)),
        )

    async def model_ready(self, model: str, version: str | None = None) -> ModelReady:
        info = await self._model(model, None)
        wanted = version or info.default_variant
        ready = info.variant(wanted) is not None and info.health.healthy
        if ready and self.warm_marks is not None:
            # Ready once every worker has loaded and run the variant(s): the first request pays no load.
            variants = [v for v in info.variants if version is None or v.name == version]
            ready = await run_in_threadpool(warm_everywhere, self.warm_marks, info, variants)
        return ModelReady(name=info.name, ready=ready)

    async def infer(self, request: Request, model: str, version: str | None = None) -> Response:
        if version is not None and version not in VARIANTS:
            raise ApiError(404, "version_not_found", f"unknown version {version!r}; the versions are {list(VARIANTS)}")
        header_length = request.headers.get(HEADER_LENGTH)
        routing_key = request.headers.get(ROUTING_KEY_HEADER)
        if header_length is None:  # all of it is JSON
            body = await read_body(request, self.max_json_bytes)
            json_bytes = len(body)
        else:
            json_bytes = int(header_length) if header_length.isdigit() else 0  # decode_request explains a bad one
            if json_bytes > self.max_json_bytes:
                raise too_large(self.max_json_bytes, "the JSON part of the body (Inference-Header-Content-Length)")
            body = await request.body()
        if json_bytes > INLINE_PARSE_BYTES:
            # Parsing this much JSON would hold the API server for long: the worker decodes it.
            raw = RawInfer(model, version, carry(body, self.space), header_length, routing_key)
            del body
            try:
                return await self._answer(raw)
            finally:
                release(raw.data)
        try:
            call = decode(body, header_length, model, version, routing_key)
        except WireError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from None
        shared = []
        try:
            for tensor in call.inputs:
                if tensor.array.nbytes >= MIN_BYTES:
                    tensor.array = self._share(tensor.array)
                    if isinstance(tensor.array, SharedArray):
                        shared.append(tensor.array)
            return await self._answer(call)
        finally:
            for array in shared:
                array.data.unlink()

    def _share(self, array: np.ndarray) -> np.ndarray | SharedArray:
        try:
            return self.space.share_array(array)
        except ShmFull as exc:
            if array.nbytes <= QUEUE_FALLBACK_BYTES:
                return array  # through LitServe's queue: slower, but served
            raise ApiError(503, "shm_full", str(exc)) from None

    async def _answer(self, call: InferCall | RawInfer) -> Response:
        answer = await self.bridge.call(call)
        return answer.to_response() if isinstance(answer, SharedResponse) else answer

    async def repository_index(self) -> list[RepositoryEntry]:
        models = await run_in_threadpool(self.store.list)
        entries = []
        for info in models:
            for name in VARIANTS:
                available = info.variant(name) is not None and info.health.healthy
                reason = "" if available else _unavailable_reason(info, name)
                entries.append(RepositoryEntry(name=info.name, version=name, state="READY" if available else "UNAVAILABLE", reason=reason))
        return entries

    async def _model(self, ref: str, version: str | None) -> ModelInfo:
        info = await run_in_threadpool(self.store.get, ref)
        if info is None:
            raise not_found(ref)
        if version is not None and (version not in VARIANTS or info.variant(version) is None):
            raise ApiError(404, "version_not_found", f"model {info.name!r} has no version {version!r}; it has {[v.name for v in info.variants]}")
        return info


def _tensors(names: list[str], shapes: list[list[int]], dtypes: list[str]) -> list[MetadataTensor]:
    """Tensor metadata from the upload's summary (torch dtype names), the batch dimension as -1."""
    return [
        MetadataTensor(name=name, datatype=datatype_of(dtype), shape=[-1, *shape])
        for name, shape, dtype in zip(names, shapes, dtypes)
    ]


def _unavailable_reason(info: ModelInfo, variant: VariantName) -> str:
    if not info.health.healthy:
        return info.health.reason or "unhealthy"
    if info.state in ("queued", "optimizing"):
        return f"the optimization is {info.state}"
    if info.state == "failed":
        return f"the optimization failed: {info.error}"
    return info.chosen.reason if info.chosen else f"no {variant} variant"
