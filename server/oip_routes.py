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

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from wire import ModelMetadata
from wire.codec import HEADER_LENGTH, WireError, decode_request
from wire.schemas import ErrorBody, InferenceRequest, MetadataTensor, ModelReady, RepositoryEntry, ServerMetadata

from .codec import DATATYPES
from .errors import ApiError, JsonResponse, not_found
from .litserve_bridge import QueueBridge
from .oip_call import InferCall
from .predict_route import ROUTING_KEY_HEADER
from .runtimes import warm_everywhere
from .schemas import ModelInfo, VariantName
from .shared_tensors import MIN_BYTES, SharedResponse, share_array
from .store import Store

VARIANTS = ("original", "optimized")
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 503)}


class OipRoutes:
    def __init__(
        self, store: Store, bridge: QueueBridge, workers_ready: Callable[[], bool], shm_prefix: str, warm_marks: Path | None = None
    ) -> None:
        self.store = store
        self.warm_marks = warm_marks  # where the workers say what they have warmed; None: no warm-up check
        self.shm_prefix = shm_prefix
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
        body = await request.body()
        try:
            parsed, tensors = decode_request(body, request.headers.get(HEADER_LENGTH))
        except WireError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from None
        shared = [tensor for tensor in tensors if tensor.array.nbytes >= MIN_BYTES]
        for tensor in shared:
            tensor.array = share_array(tensor.array, self.shm_prefix)
        call = InferCall(
            model=model,
            variant=version,
            inputs=tensors,
            request_id=parsed.id,
            binary_outputs=_binary_outputs(parsed),
            requested_outputs=[output.name for output in parsed.outputs] if parsed.outputs else None,
            routing_key=request.headers.get(ROUTING_KEY_HEADER),
        )
        try:
            answer = await self.bridge.call(call)
        finally:
            for tensor in shared:
                tensor.array.data.unlink()
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
        MetadataTensor(name=name, datatype=DATATYPES.get(getattr(torch, dtype, None), "FP32"), shape=[-1, *shape])
        for name, shape, dtype in zip(names, shapes, dtypes)
    ]


def _binary_outputs(request: InferenceRequest) -> dict[str, bool] | bool:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return default
    return {output.name: bool((output.parameters or {}).get("binary_data", default)) for output in request.outputs}


def _unavailable_reason(info: ModelInfo, variant: VariantName) -> str:
    if not info.health.healthy:
        return info.health.reason or "unhealthy"
    if info.state in ("queued", "optimizing"):
        return f"the optimization is {info.state}"
    if info.state == "failed":
        return f"the optimization failed: {info.error}"
    return info.chosen.reason if info.chosen else f"no {variant} variant"
