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
- `supervise_workers`: the main process's watch over the inference workers, in place of LitServe's
  (which polls every 2 s and answers nothing that waits in an API server).

Isolation between models. QueueBridge admits at most one group of a model's requests into the
workers at a time (per API server): later requests for that model wait in the API server and go
together, as one queue item, once the group is answered. A worker takes one queue item per batch,
so a batch holds one model, and a slow or hung model occupies at most one worker per API server
while the others stay free for every other model.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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
logger = logging.getLogger("optiserve")
# The uid field of a queue item that carries a group of one model's requests, not one request.
GROUP = "optiserve-group"
# Exit code of a worker that retires on purpose after answering its batch (e.g. after a request hit
# its memory cap); the forward watchdog's is forward_watchdog.EXIT_CODE.
RETIRED_EXIT_CODE = 76

Member = tuple[str, float, Any]  # (uid, arrival time, payload) of one request in a group


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
        event = asyncio.Event()
        buffer = self.server.response_buffer
        buffer[uid] = ResponseBufferItem(event=event)
        key = str(getattr(payload, "model", ""))
        lane = self._lanes.setdefault(key, _Lane())
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


# ---- what a worker holds, for the main process to answer if it dies ----


class HeldBatch(BaseModel):
    """The requests a worker holds (written before their forward call), or why it retired."""

    model: str = ""  # as the requests named it
    pid: int = 0  # the worker's
    requests: list[tuple[int, str]] = []  # (response queue id, uid)
    failure: str | None = None  # a worker that retires on purpose: what its model did (e.g. out_of_memory)
    reason: str = ""


class HeldRecord:
    """A small per-worker file. The worker rewrites it per batch (one pwrite, a few microseconds);
    the main process reads it only once the worker is dead, so the two never race."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Opened once, before the worker's filesystem is confined.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._empty = True
        self.pid = os.getpid()

    def write(self, batch: HeldBatch) -> None:
        data = batch.model_dump_json().encode()
        os.pwrite(self._fd, len(data).to_bytes(4, "little") + data, 0)
        self._empty = False

    def clear(self) -> None:
        if not self._empty:
            os.pwrite(self._fd, bytes(4), 0)
            self._empty = True

    @staticmethod
    def read(path: Path) -> HeldBatch:
        try:
            data = path.read_bytes()
            return HeldBatch.model_validate_json(data[4 : 4 + int.from_bytes(data[:4], "little")]) if data[:4] != bytes(4) else HeldBatch()
        except (OSError, ValueError):
            return HeldBatch()


def held_record_path(directory: Path, api_path: str, worker_id: int) -> Path:
    return directory / f"{api_path.strip('/').replace('/', '-')}-{worker_id}.held"


def current_worker_id() -> int:
    """The LitServe worker id of this inference worker (LitServe sets it before setup)."""
    return int(os.environ.get("LITSERVE_WORKER_ID", "0"))


class GreedyBatchLoop(BatchedLoop):
    """LitServe's batched loop, but a batch is one queue item, taken the moment it arrives.

    LitServe's own collection waits up to `batch_timeout` for company, so a lone request always
    pays that wait, and an idle worker polls its queue every millisecond. Here an idle worker blocks
    on the queue and runs what it takes at once. The API server has already merged a model's queued
    requests into one group item; taking no more than that keeps one model per batch, so nothing
    of another model ever waits behind this model's forward calls.

    It remembers the batch it holds, so that another thread (the forward watchdog) can answer it
    when the loop's own thread is stuck in a forward call, and writes it to `record` so that the main
    process can answer it when the worker dies. It does not send LitServe's per-request START
    message: that only feeds LitServe's worker monitor, which is not used (see supervise_workers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[int, str, float, Any]] = []  # (response queue id, uid, arrival, payload)
        self._models: dict[int, str] = {}  # batch position -> model id, once the model is looked up
        self._transport: Any = None
        self._queue: Any = None
        self._retire: HeldBatch | None = None
        self.record: HeldRecord | None = None

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        # The previous batch is answered by now: nothing is held any more.
        self._transport, self._queue, self._held, self._models = transport, request_queue, [], {}
        if self.record is not None:
            self.record.clear()
            if self._retire is not None:
                self.record.write(self._retire)
                os._exit(RETIRED_EXIT_CODE)
        item = self.get_request(request_queue, timeout=IDLE_WAKE_SECONDS)
        if item is None:
            return [], []
        if item == _SENTINEL_VALUE:
            raise _StopLoopError()
        response_queue_id, uid, arrived, payload = item
        taken = [(response_queue_id, *member) for member in payload] if uid == GROUP else [item]
        payloads, timed_out = [], []
        moment = time.monotonic()
        for response_queue_id, uid, arrived, payload in taken:
            if moment - arrived > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, payload))
                self._held.append((response_queue_id, uid, arrived, payload))
        if self.record is not None and self._held:
            model = str(getattr(self._held[0][3], "model", ""))
            self.record.write(HeldBatch(model=model, pid=self.record.pid, requests=[(q, u) for q, u, _, _ in self._held]))
        return payloads, timed_out

    def running(self, positions: Iterable[int], model_id: str) -> None:
        """Predict says which model the requests at these batch positions are for (model code may run now)."""
        for position in positions:
            self._models[position] = model_id

    def retire_after_batch(self, failure: str, model_id: str, reason: str) -> None:
        """End this worker once its batch is answered; the main process counts `failure` against the model."""
        self._retire = HeldBatch(model=model_id, failure=failure, reason=reason)

    def release_held(self, model_id: str, error: HTTPException) -> None:
        """From any thread, as the worker is about to end: answer the held requests for `model_id` with
        `error`, and put every other held request back on the queue (with its arrival time) for
        another worker."""
        failure = PickleableHTTPException.from_exception(error)
        back: dict[int, list[Member]] = {}
        for position, (response_queue_id, uid, arrived, payload) in enumerate(self._held):
            if self._models.get(position) == model_id:
                self.put_response(self._transport, response_queue_id, uid, failure, LitAPIStatus.ERROR, LoopResponseType.REGULAR)
            else:
                back.setdefault(response_queue_id, []).append((uid, arrived, payload))
        for response_queue_id, members in back.items():
            self._queue.put((response_queue_id, GROUP, members[0][1], tuple(members)))
        self._held = []
        if self.record is not None:
            self.record.clear()


# ---- the main process's watch over the inference workers ----


@dataclass
class WorkerDeath:
    api_path: str
    worker_id: int
    pid: int
    exit_code: int | None
    held: HeldBatch

    @property
    def how(self) -> str:
        code = self.exit_code
        if code is not None and code < 0:
            import signal

            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"


def supervise_workers(server: ls.LitServer, records: Path, on_death: Callable[[WorkerDeath], HTTPException | None]) -> None:
    """Watch the inference workers from the main process in place of LitServe's monitor.

    A dead worker is seen at once (its process sentinel), `on_death` (which logs it and counts it
    against its model) returns the error its held requests get, they get it at once through the
    API servers' response queues, and a fresh worker takes its place."""
    stopping = threading.Event()
    shutdown = server._perform_graceful_shutdown

    def graceful_shutdown(*args: Any, **kwargs: Any) -> None:
        stopping.set()  # the workers it terminates are not to be replaced
        shutdown(*args, **kwargs)

    def start(manager: Any, uvicorn_workers: Any) -> None:
        threading.Thread(target=_watch, args=(server, records, on_death, stopping), daemon=True, name="optiserve-worker-monitor").start()

    server._perform_graceful_shutdown = graceful_shutdown
    server._start_worker_monitoring = start


def _watch(server: ls.LitServer, records: Path, on_death: Callable[[WorkerDeath], HTTPException | None], stopping: threading.Event) -> None:
    while not stopping.is_set():
        workers = list(server.inference_workers)
        multiprocessing.connection.wait([worker.sentinel for worker in workers], timeout=IDLE_WAKE_SECONDS)
        for index, worker in enumerate(workers):
            if stopping.is_set() or worker.is_alive():
                continue
            try:
                _replace(server, records, on_death, index, worker)
            except Exception:
                if stopping.is_set():
                    return
                logger.exception("could not replace inference worker %s", worker.pid)


def _replace(server: ls.LitServer, records: Path, on_death: Callable[[WorkerDeath], HTTPException | None], index: int, worker: Any) -> None:
    lit_api, worker_id = _worker_slot(server, index)
    path = held_record_path(records, lit_api.api_path, worker_id)
    death = WorkerDeath(lit_api.api_path, worker_id, worker.pid, worker.exitcode, HeldRecord.read(path))
    error = on_death(death)
    if error is not None:
        failure = PickleableHTTPException.from_exception(error)
        for response_queue_id, uid in death.held.requests:
            server._transport.send((uid, (failure, LitAPIStatus.ERROR, LoopResponseType.REGULAR, worker_id)), consumer_id=response_queue_id)
    path.unlink(missing_ok=True)
    server.inference_workers[index] = server.launch_single_inference_worker(lit_api, worker_id)


def _worker_slot(server: ls.LitServer, index: int) -> tuple[Any, int]:
    # LitServe lists the workers of every API in order, each API's numbered from 0.
    for lit_api in server.litapi_connector:
        count = len(server._inference_workers_config_for_api(lit_api.api_path))
        if index < count:
            return lit_api, index
        index -= count
    raise LookupError(f"no inference worker at index {index}")


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
            watcher = threading.Thread(target=_watch_api_servers, args=(workers, launch, stopping, every, tick), daemon=True, name="optiserve-api-supervisor")
            watcher.start()
        return workers

    def shutdown(*args, **kwargs):
        stopping.set()  # LitServe is about to stop the API servers itself: no restarts from here on
        return shut_down(*args, **kwargs)

    server._start_server, server._perform_graceful_shutdown = start, shutdown


def _watch_api_servers(workers: dict[int, Any], launch: Callable[[int], Any], stopping: threading.Event, every: float, tick: Callable[[], None]) -> None:
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
