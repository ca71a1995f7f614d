"""The GRPCInferenceService servicer, and the lifespan that runs it inside each API-server process."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from fastapi import HTTPException
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from wire import WireError

from .. import metrics
from ..http.auth import BearerKey
from ..errors import ApiError
from ..litserve_bridge import QueueBridge
from ..inference.adapters.oip import InferCall, error_message
from ..http.oip_routes import VARIANTS, OipRoutes
from ..http.predict_route import ROUTING_KEY_HEADER
from ..settings import Settings
from ..inference.shared_tensors import MIN_BYTES, SharedArray, SharedResponse
from .message_guard import Refused, guarded_handler
from .tensors import infer_response, request_tensors

ENDPOINT = "/inference.GRPCInferenceService/ModelInfer"  # the label of /metrics' request series
# HTTP statuses (what the REST side and the workers answer with) as gRPC codes.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OipGrpcService(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of KServe's protocol; Triton's extensions (statistics, repository, ...) stay UNIMPLEMENTED."""

    def __init__(self, settings: Settings, routes: OipRoutes, bridge: QueueBridge, guard: BearerKey | None) -> None:
        self.settings = settings
        self.routes = routes
        self.bridge = bridge
        self.guard = guard if settings.auth_inference else None  # as on REST: the key guards /v2 only when asked

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return await self._answer(context, lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return await self._answer(context, lambda: pb.ServerReadyResponse(ready=self.routes.workers_ready()))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        async def build() -> pb.ServerMetadataResponse:
            found = await self.routes.server_metadata()
            return pb.ServerMetadataResponse(name=found.name, version=found.version, extensions=found.extensions)

        return await self._answer(context, build)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def build() -> pb.ModelReadyResponse:
            found = await self.routes.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=found.ready)

        return await self._answer(context, build)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def build() -> pb.ModelMetadataResponse:
            found = await self.routes.model_metadata(request.name, request.version or None)
            tensors = lambda items: [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in items]  # noqa: E731
            return pb.ModelMetadataResponse(
                name=found.name, versions=found.versions, platform=found.platform, inputs=tensors(found.inputs), outputs=tensors(found.outputs)
            )

        return await self._answer(context, build)

    async def ModelInfer(self, request: pb.ModelInferRequest | Refused, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        seen = {"status": 500, "model": "", "variant": ""}
        try:
            return await self._answer(context, lambda: self._infer(request, context, seen), seen)
        finally:
            metrics.REQUEST_SECONDS.labels(ENDPOINT, seen["model"], seen["variant"]).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(ENDPOINT, seen["model"], seen["variant"], str(seen["status"])).inc()

    async def _infer(self, request: pb.ModelInferRequest | Refused, context: grpc.aio.ServicerContext, seen: dict[str, Any]) -> pb.ModelInferResponse:
        if isinstance(request, Refused):
            raise Failure(400, request.message)
        version = request.model_version or None
        if version is not None and version not in VARIANTS:
            raise Failure(404, f"unknown version {version!r}; the versions are {list(VARIANTS)}")
        try:
            tensors = request_tensors(request)
        except WireError as exc:
            raise Failure(400, str(exc)) from None
        shared = []
        for tensor in tensors:  # large inputs cross to the worker through shared memory, as on REST
            if tensor.array.nbytes >= MIN_BYTES:
                tensor.array = self.routes._share(tensor.array)
                if isinstance(tensor.array, SharedArray):
                    shared.append(tensor)
        call = InferCall(
            model=request.model_name,
            variant=version,
            inputs=tensors,
            request_id=request.id or None,
            binary_outputs=True,  # every output comes back raw: raw_output_contents
            requested_outputs=[output.name for output in request.outputs] or None,
            routing_key=_metadata(context).get(ROUTING_KEY_HEADER.lower()),
        )
        remaining = context.time_remaining()
        seconds = self.settings.request_timeout if remaining is None else min(remaining, self.settings.request_timeout)
        try:
            answer = await asyncio.wait_for(self.bridge.call(call), seconds)
        except asyncio.TimeoutError:
            raise Failure(504, f"no answer within {seconds:g} s of arrival (the call's deadline or OPTISERVE_REQUEST_TIMEOUT); retry later") from None
        except HTTPException as exc:  # the worker's own errors (a forward timeout, a crash)
            detail = exc.detail
            raise Failure(exc.status_code, detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)) from None
        finally:
            for tensor in shared:
                tensor.array.data.unlink()
        if isinstance(answer, SharedResponse):
            answer = answer.to_response()
        seen["model"] = answer.headers.get(metrics.MODEL_HEADER, "")
        seen["variant"] = answer.headers.get(metrics.VARIANT_HEADER, "")
        if answer.status_code != 200:
            raise Failure(answer.status_code, error_message(answer.body))
        response = infer_response(answer.body, answer.headers)
        seen["status"] = 200
        return response

    async def _answer(self, context: grpc.aio.ServicerContext, build: Callable[[], Any], seen: dict[str, Any] | None = None) -> Any:
        """Check the key, run `build`, and turn our errors into gRPC status codes."""
        try:
            if self.guard is not None:
                self.guard.check(_metadata(context).get("authorization", ""))
            result = build()
            return await result if asyncio.iscoroutine(result) else result
        except (ApiError, Failure) as exc:
            status = exc.status
            message = exc.message
        if seen is not None:
            seen["status"] = status
        await context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), message)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


def _address(settings: Settings) -> str:
    host = "[::]" if settings.host == "::" else settings.host
    return f"{host}:{settings.grpc_port}"


def check_port_free(settings: Settings) -> str | None:
    """Why the gRPC port cannot be used, or None. Checked once in the main process: the API servers
    bind it with SO_REUSEPORT, which would otherwise let them share it with another server's."""
    if settings.grpc_port == settings.port:
        return f"--grpc-port {settings.grpc_port} is the HTTP port too; give gRPC a port of its own"
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((settings.host, settings.grpc_port))
        except OSError as exc:
            return f"the gRPC port {settings.grpc_port} on {settings.host} is taken ({exc.strerror}); pass another --grpc-port, or 0 for none"
    return None


def grpc_lifespan(
    settings: Settings, routes: OipRoutes, bridge: QueueBridge, guard: BearerKey | None
) -> Callable[[], AbstractAsyncContextManager[None]] | None:
    """The gRPC server's lifespan in one API-server process, or None when --grpc-port is 0."""
    if not settings.grpc_port:
        return None

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),  # every API-server process listens on the port; the kernel spreads connections
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        server.add_generic_rpc_handlers((guarded_handler(OipGrpcService(settings, routes, bridge, guard)),))
        server.add_insecure_port(_address(settings))
        await server.start()
        try:
            yield
        finally:
            await server.stop(grace=1.0)

    return lifespan
