"""POST /predict and POST /compare, in front of their workers: JSON bodies read within their own limit,
and parsed where a large one cannot stall the API server.

LitServe's own route hands the workers the parsed body only; this one also carries the request's
X-Routing-Key header, so a split can keep one caller on one variant.

FastAPI would parse the body on the event loop: a 66 MB body held /health for 11 s. Parsing holds
the GIL however it is done in this process (pydantic's parser never lets go of it; 8 MB of `[0],`
takes a second here), so a thread would not help. Small bodies, the serving fast path, are parsed
here at once; larger ones (up to `max_json_bytes`) travel to the worker as bytes and are parsed
there, so the API server only ever copies them.
"""

from __future__ import annotations

from typing import Any, Union

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ..errors import ApiError
from ..litserve_bridge import QueueBridge
from ..inference.schemas import CompareRequest, PredictRequest
from ..inference.json_body import JsonBody, in_body, with_routing_key
from ..inference.shared_tensors import MIN_BYTES, QUEUE_FALLBACK_BYTES, SharedBytes, SharedSpace, ShmFull

ROUTING_KEY_HEADER = "X-Routing-Key"
# Bodies up to this size are parsed in the API server: a few milliseconds at worst, and a hop to the
# worker costs the small request more than its parse.
INLINE_PARSE_BYTES = 64 * 1024
BINARY_HINT = (
    "send large tensors as binary data instead: POST /v2/models/<model>/infer with the binary tensor extension "
    "(tritonclient's binary_data=True, or optiserve's client)"
)


def too_large(limit: int, what: str = "the JSON body") -> ApiError:
    return ApiError(413, "json_too_large", f"{what} is larger than the limit of {limit} bytes (OPTISERVE_MAX_JSON_BYTES); {BINARY_HINT}")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 as soon as it is known to pass `limit` (before reading, when Content-Length says so)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def carry(data: bytes, space: SharedSpace) -> Union[bytes, SharedBytes]:
    """Bytes for a worker: in shared memory when large, through the queue when small or when that is full."""
    if len(data) < MIN_BYTES:
        return data
    try:
        return space.share([data])
    except ShmFull as exc:
        if len(data) <= QUEUE_FALLBACK_BYTES:
            return data
        raise ApiError(503, "shm_full", str(exc)) from None


def release(data: Any) -> None:
    if isinstance(data, SharedBytes):
        data.unlink()


class PredictRoute:
    """/predict (PredictRequest) or /compare (CompareRequest), through a QueueBridge to their workers."""

    def __init__(self, bridge: QueueBridge, max_json_bytes: int, space: SharedSpace, schema: type[CompareRequest] = PredictRequest) -> None:
        self.bridge = bridge
        self.max_json_bytes = max_json_bytes
        self.space = space
        self.schema = schema

    def install(self, app: FastAPI, dependencies: list[Any] | None) -> None:
        # On the app itself, not through a router: api_docs documents the inference routes it finds there.
        body = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{self.schema.__name__}"}}}}
        app.add_api_route(self.bridge.api_path, self.handle, methods=["POST"], dependencies=dependencies, openapi_extra={"requestBody": body})

    async def handle(self, request: Request) -> Response:
        body = await read_body(request, self.max_json_bytes)
        routing_key = request.headers.get(ROUTING_KEY_HEADER)
        if routing_key is not None and len(routing_key) > 256:
            raise ApiError(422, "invalid_request", f"the {ROUTING_KEY_HEADER} header is longer than 256 characters")
        if len(body) <= INLINE_PARSE_BYTES:
            try:
                parsed = self.schema.model_validate_json(body)
            except ValidationError as exc:
                raise RequestValidationError(in_body(exc)) from None
            return await self.bridge.call(with_routing_key(parsed, routing_key))
        payload = JsonBody(carry(body, self.space), routing_key)
        del body  # the API server keeps no second copy while the worker runs
        try:
            return await self.bridge.call(payload)
        finally:
            release(payload.data)
