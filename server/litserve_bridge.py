"""The one place that reaches into LitServe's internals (litserve 0.2.19, pinned in pyproject).

- `QueueBridge`: LitServe's own routes parse every body as JSON (or a form) before we see it, which
  the Open Inference Protocol's binary bodies are not. LitSpec endpoints solve this by putting a
  payload on the API's request queue themselves and waiting for its answer; this does the same for
  a plain FastAPI route.
- `take_over_route`: removes the route LitServe made for an API, so that a route of ours (which
  reaches the workers through a QueueBridge) answers that path instead.
- `drop_gzip`: LitServe always adds GZipMiddleware (level 9). Compressing a 2.8 MB JSON tensor
  answer took 0.8 s of the API server's CPU, 100x the rest of the request; tensors barely compress.
- `GreedyBatchLoop`: how a worker collects a batch (a loop is a public LitAPI argument; the queue
  items and the sentinel it handles are not).
- `supervise_api_servers`: LitServe forks its API server processes once and never looks at them
  again; one that died (SIGBUS, kill -9) left the shared listening socket open with nobody to
  answer, so clients hung. They are watched, and restarted the way LitServe started them.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import multiprocessing
import pickle
import signal
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

import litserve as ls
import uvicorn
from fastapi import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import _Server
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException, ResponseBufferItem

# How long an idle worker blocks on its queue before LitServe's loop gets control back.
IDLE_WAKE_SECONDS = 1.0
# A request that waited less than this was taken the moment it arrived, by an idle worker: nothing
# else is likely queued, and asking (one more round trip to LitServe's queue manager) would cost a
# lone request more than its forward call on a small model.
BACKLOG_SECONDS = 0.0005
logger = logging.getLogger("optiserve")


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


def take_over_route(server: ls.LitServer, path: str) -> None:
    server.app.router.routes[:] = [route for route in server.app.router.routes if getattr(route, "path", None) != path]


def drop_gzip(server: ls.LitServer) -> None:
    """Remove the GZipMiddleware LitServe put on the app, and from its list, which run() registers again."""
    server.middlewares = [m for m in server.middlewares if (m[0] if isinstance(m, tuple) else m) is not GZipMiddleware]
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]


class GreedyBatchLoop(BatchedLoop):
    """LitServe's batched loop, but a batch is whatever is queued now, up to `max_batch_size`.

    LitServe's own collection waits up to `batch_timeout` for company, so a lone request always
    pays that wait, and an idle worker polls its queue every millisecond. Here an idle worker blocks
    on the queue; once a request arrives it takes the others already waiting and runs at once.
    Under load, requests pile up during a forward call and the next batch merges them (it looks for
    more only when the first request had to wait, see BACKLOG_SECONDS).

    It remembers the batch it holds, so that another thread (the forward watchdog) can answer it
    when the loop's own thread is stuck in a forward call. It does not send LitServe's per-request
    START message: that only feeds the worker monitor's bookkeeping in the main process, which
    cannot see the API servers' waiting requests anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[int, str]] = []
        self._transport: Any = None

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        self._transport, self._held = transport, []
        first = self.get_request(request_queue, timeout=IDLE_WAKE_SECONDS)
        if first is None:
            return [], []
        taken = [first]
        backlog = time.monotonic() - first[2] > BACKLOG_SECONDS if first != _SENTINEL_VALUE else False
        while backlog and len(taken) < lit_api.max_batch_size and (item := self.get_request(request_queue, block=False)) is not None:
            taken.append(item)
        if _SENTINEL_VALUE in taken:
            raise _StopLoopError()
        payloads, timed_out = [], []
        moment = time.monotonic()
        for response_queue_id, uid, arrived, payload in taken:
            if moment - arrived > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
        self._held = [(response_queue_id, uid) for response_queue_id, uid, _ in payloads]
        return payloads, timed_out

    def answer_held(self, error: HTTPException) -> None:
        """Answer every request of the batch in progress with `error`, from any thread."""
        failure = PickleableHTTPException.from_exception(error)
        for response_queue_id, uid in self._held:
            self.put_response(self._transport, response_queue_id, uid, failure, LitAPIStatus.ERROR, LoopResponseType.REGULAR)


def supervise_api_servers(server: ls.LitServer, every: float, tick: Callable[[], None]) -> None:
    """Once `run()` has forked the API servers, restart any that dies; `tick` runs every `every` seconds meanwhile.

    A thread of the main process watches their sentinels (the main thread is parked in run()). A
    restarted server takes the same response queue id, so answers still find their way.
    """
    start_servers, shut_down = server._start_server, server._perform_graceful_shutdown
    stopping = threading.Event()

    def start(port, count, log_level, sockets, worker_type, **kwargs):
        workers = start_servers(port, count, log_level, sockets, worker_type, **kwargs)
        if worker_type == "process":
            launch = lambda index: _fork_api_server(server, index, port, log_level, sockets, kwargs)  # noqa: E731
            watcher = threading.Thread(target=_watch, args=(workers, launch, stopping, every, tick), daemon=True, name="optiserve-api-supervisor")
            watcher.start()
        return workers

    def shutdown(*args, **kwargs):
        stopping.set()  # LitServe is about to stop the API servers itself: no restarts from here on
        return shut_down(*args, **kwargs)

    server._start_server, server._perform_graceful_shutdown = start, shutdown


def _watch(workers: dict[int, Any], launch: Callable[[int], Any], stopping: threading.Event, every: float, tick: Callable[[], None]) -> None:
    while not stopping.is_set():
        wait([process.sentinel for process in workers.values()], timeout=every)
        for index, process in list(workers.items()):
            if process.is_alive() or stopping.is_set():
                continue
            code = process.exitcode
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            logger.error("API server %d (pid %d) died (%s); restarting it", index, process.pid, how)
            workers[index] = launch(index)  # the dict LitServe's shutdown stops, so it stops this one too
        try:
            tick()
        except Exception:
            logger.exception("periodic front-end upkeep failed")
    # A restarted server dies with the thread that forked it (PR_SET_PDEATHSIG follows the thread):
    # this one stays until LitServe's shutdown has stopped them all.
    wait([process.sentinel for process in workers.values()], timeout=60)


def _fork_api_server(server: ls.LitServer, index: int, port: int, log_level: str, sockets: list, kwargs: dict) -> Any:
    # As LitServer._start_server (litserve 0.2.19) starts each API server, for one index.
    server.app.response_queue_id = index
    app = copy.copy(server.app)
    server._prepare_app_run(app)
    config = uvicorn.Config(
        app=app, host="0.0.0.0", port=port, log_level=log_level, timeout_graceful_shutdown=server.uvicorn_graceful_timeout, **kwargs
    )
    process = multiprocessing.get_context("fork").Process(target=_Server(config=config).run, args=(index, sockets), name=f"LitServer-{index}")
    process.start()
    return process
