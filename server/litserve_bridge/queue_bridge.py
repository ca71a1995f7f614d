"""QueueBridge: our routes put payloads on an API's request queue, one group per model at a time; route and middleware takeovers."""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import litserve as ls
from fastapi import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from litserve.utils import LitAPIStatus, ResponseBufferItem


from .batching import GROUP

class _Answered(asyncio.Event):
    """A request's event, set when its answer arrives (by the datagram reader or LitServe's): the
    lane hears of it then, so the model's next group leaves before any answer of this group has
    been written out (which takes the event loop a while per answer), not after all of them."""

    def __init__(self, on_answer: Callable[[], None]) -> None:
        super().__init__()
        self._on_answer = on_answer

    def set(self) -> None:
        super().set()
        self._on_answer()


@dataclass
class _Lane:
    """One model's requests in one API server: the uids of the group in a worker, and those waiting."""

    running: set[str] = field(default_factory=set)
    waiting: dict[str, tuple[float, Any]] = field(default_factory=dict)


class QueueBridge:
    def __init__(self, server: ls.LitServer, api_path: str, max_group: int = 1) -> None:
        self.server = server
        self.api_path = api_path
        self.max_group = max_group  # requests sent together: the API's max_batch_size
        self._lanes: dict[str, _Lane] = {}

    async def call(self, payload: Any) -> Any:
        """Hand `payload` to the API's workers (its decode_request receives it) and return encode_response's result.

        Payloads with a `model` take turns per model (see the module's docstring)."""
        uid = str(uuid.uuid4())
        key = str(getattr(payload, "model", ""))
        lane = self._lanes.setdefault(key, _Lane())
        event = _Answered(lambda: self._finished(key, lane, uid))
        buffer = self.server.response_buffer
        buffer[uid] = ResponseBufferItem(event=event)
        lane.waiting[uid] = (time.monotonic(), payload)
        if not lane.running:
            self._send(lane)
        try:
            await event.wait()
            response, status = buffer[uid].response
        finally:
            buffer.pop(uid, None)  # also when the deadline cancelled the wait
            self._finished(key, lane, uid)
        if status == LitAPIStatus.ERROR:
            raise _as_http_error(response)
        return response

    def _send(self, lane: _Lane) -> None:
        uids = list(lane.waiting)[: self.max_group]
        members = tuple((uid, *lane.waiting.pop(uid)) for uid in uids)
        lane.running = set(uids)
        queue = self.server._get_request_queue(self.api_path)
        queue.put((self.server.app.response_queue_id, GROUP, members[0][1], members))

    def _finished(self, key: str, lane: _Lane, uid: str) -> None:
        # Answered, or given up on by its deadline: either way the group no longer waits for it.
        # (Called twice for an answered request: when the answer arrives, and when its call ends.)
        lane.waiting.pop(uid, None)
        lane.running.discard(uid)
        if lane.running:
            return
        if lane.waiting:
            self._send(lane)
        elif self._lanes.get(key) is lane:
            del self._lanes[key]


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


def take_over_route(server: ls.LitServer, path: str) -> None:
    server.app.router.routes[:] = [route for route in server.app.router.routes if getattr(route, "path", None) != path]


def drop_gzip(server: ls.LitServer) -> None:
    """Remove the GZipMiddleware LitServe put on the app, and from its list, which run() registers again."""
    server.middlewares = [m for m in server.middlewares if (m[0] if isinstance(m, tuple) else m) is not GZipMiddleware]
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]


