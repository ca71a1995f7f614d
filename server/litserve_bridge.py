"""The one place that reaches into LitServe's internals: submitting a request from our own route.

LitServe's own routes parse every body as JSON (or a form) before we see it, which the Open
Inference Protocol's binary bodies are not. LitSpec endpoints solve this by putting a payload on
the API's request queue themselves and waiting for its answer; this does the same for a plain
FastAPI route, with the plumbing of litserve 0.2.19 (pinned in pyproject).
"""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from typing import Any

import litserve as ls
from fastapi import HTTPException
from litserve.utils import LitAPIStatus, ResponseBufferItem


class QueueBridge:
    def __init__(self, server: ls.LitServer, api_path: str) -> None:
        self.server = server
        self.api_path = api_path

    async def call(self, payload: Any) -> Any:
        """Hand `payload` to the API's workers (its decode_request receives it) and return encode_response's result."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        buffer = self.server.response_buffer
        buffer[uid] = ResponseBufferItem(event=event)
        queue = self.server._get_request_queue(self.api_path)
        queue.put((self.server.app.response_queue_id, uid, time.monotonic(), payload))
        try:
            await event.wait()
            response, status = buffer[uid].response
        finally:
            buffer.pop(uid, None)  # also when the deadline cancelled the wait
        if status == LitAPIStatus.ERROR:
            raise _as_http_error(response)
        return response


def _as_http_error(response: Any) -> HTTPException:
    # A worker's HTTPException arrives pickled; anything else is an internal error.
    if isinstance(response, bytes):
        try:
            response = pickle.loads(response)
        except Exception:
            pass
    if isinstance(response, HTTPException):
        return response
    return HTTPException(500, "inference failed in the worker; the server log has details")
