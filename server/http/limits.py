"""Request limits enforced in the API server: body size before a large upload is read into memory,
and the deadline from a request's arrival to its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_response, status_code_name


UPLOAD_ROUTE = ("POST", "/models")
# Bodies of routes that neither upload nor infer: routing policies and guards are a few KB.
CONTROL_MAX_BYTES = 1 << 20


class BodySizeLimitMiddleware:
    """413 when Content-Length is over the limit; for chunked bodies, as soon as the count passes it.

    An upload (POST /models) may also carry an unlabeled set, streamed to disk: its body may be
    `upload_max_bytes` (the upload's parts and the unlabeled part's limits together); the route
    checks each part against its own limit. Inference bodies may be `max_bytes`. Every other route's
    body is a small JSON document (a routing policy, a guard) that FastAPI parses on the event loop
    before the route runs: a 300 MB one held the loop 8.3 s, so those get CONTROL_MAX_BYTES."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, upload_max_bytes: int | None = None, is_inference_path: Callable[[str], bool] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes or max_bytes
        self.is_inference_path = is_inference_path

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if (scope.get("method"), scope["path"]) == UPLOAD_ROUTE:
            if self.upload_max_bytes != self.max_bytes:
                return self.upload_max_bytes, "OPTISERVE_MAX_UPLOAD_BYTES + OPTISERVE_MAX_UNLABELED_BYTES"
            return self.max_bytes, "OPTISERVE_MAX_UPLOAD_BYTES"
        if self.is_inference_path is None or self.is_inference_path(scope["path"]):
            return self.max_bytes, "OPTISERVE_MAX_UPLOAD_BYTES"
        limit = min(CONTROL_MAX_BYTES, self.max_bytes)
        return limit, "for this route: its body is a small JSON document"

    def _message(self, limit: int, setting: str) -> str:
        return f"request body is larger than the limit of {limit} bytes ({setting})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, status_code_name(413), self._message(limit, setting), path=scope["path"])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # Raised inside the route's body parsing; FastAPI passes HTTPException through (anything
                # else it turns into a 400), and the error handlers answer it.
                raise HTTPException(413, self._message(limit, setting))
            return message

        await self.app(scope, counting_receive, send)


class DeadlineMiddleware:
    """504 for a request not answered within `seconds` of its arrival, wherever the time went.

    LitServe's own timeout covers only the wait in its queue; a forward that runs long, or a worker
    that died with the request, would otherwise keep the client waiting forever.
    """

    def __init__(self, app: ASGIApp, seconds: float, applies: Callable[[str], bool]) -> None:
        self.app = app
        self.seconds = seconds
        self.applies = applies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = False

        async def watch_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, watch_start), self.seconds)
        except asyncio.TimeoutError:
            if not started:
                message = f"no answer within {self.seconds:g} s of arrival (OPTISERVE_REQUEST_TIMEOUT); retry later"
                await error_response(504, "request_timeout", message, path=scope["path"])(scope, receive, send)
