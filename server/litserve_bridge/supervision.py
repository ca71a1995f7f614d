"""The main process's watch over the inference workers and the API servers: a death is seen at once, answered, and replaced."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import litserve as ls
import uvicorn
from fastapi import HTTPException
from litserve.server import _Server
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException

from .batching import IDLE_WAKE_SECONDS, HeldBatch, HeldRecord, held_record_path
from .channels import DirectQueue

logger = logging.getLogger("optiserve")
# An API server waits for answers with get(timeout=1) on its response queue (litserve's
# MPQueueTransport.areceive). The manager runs a get of a server that died to its end, and an answer it
# takes then is sent to the dead connection: a queue is not read again until this long after its reader died.
STALE_GET_SECONDS = 2.0

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
    request_queue = server.litapi_request_queues.get(lit_api.api_path)
    if isinstance(request_queue, DirectQueue):
        request_queue.forget_worker(worker_id)
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

    A thread of the main process watches their sentinels (the main thread is parked in run()). Each
    API server has two response queues; a restarted one reads the one its dead predecessor did not,
    so that no answer goes to a get the dead one left pending (see STALE_GET_SECONDS).
    """
    start_servers, shut_down, init_manager = server._start_server, server._perform_graceful_shutdown, server._init_manager
    stopping = threading.Event()

    def init(num_api_servers: int) -> Any:
        manager = init_manager(num_api_servers)
        # Made before the inference workers start: each takes the list of queues once, at its start.
        if isinstance(server._transport, MPQueueTransport):
            server._transport._queues.extend(manager.Queue() for _ in range(num_api_servers))
        return manager

    def start(port, count, log_level, sockets, worker_type, **kwargs):
        workers = start_servers(port, count, log_level, sockets, worker_type, **kwargs)
        if worker_type == "process":
            queues = _ResponseQueues(count, spares=len(getattr(server._transport, "_queues", ())) >= 2 * count)

            def launch(index: int) -> Any:
                queue_id = queues.replace(index, stopping)
                return _fork_api_server(server, index, queue_id, port, log_level, sockets, kwargs)

            watcher = threading.Thread(target=_watch_api_servers, args=(workers, launch, stopping, every, tick), daemon=True, name="optiserve-api-supervisor")
            watcher.start()
        return workers

    def shutdown(*args, **kwargs):
        stopping.set()  # LitServe is about to stop the API servers itself: no restarts from here on
        return shut_down(*args, **kwargs)

    server._init_manager, server._start_server, server._perform_graceful_shutdown = init, start, shutdown


class _ResponseQueues:
    """Which response queue each API server reads: server i reads queue i or its spare, i + count."""

    def __init__(self, count: int, spares: bool) -> None:
        self.count, self.spares = count, spares
        self.reading = list(range(count))
        self.left_at: dict[int, float] = {}  # queue id -> when its reader died

    def replace(self, index: int, stopping: threading.Event) -> int:
        """The queue for the server that replaces server `index`, once no get of a dead server can be pending on it."""
        dead = self.reading[index]
        if not self.spares:
            return dead
        self.left_at[dead] = time.monotonic()
        queue_id = (dead + self.count) % (2 * self.count)
        if queue_id in self.left_at:  # a server that died within seconds of its start: wait out its predecessor's get
            stopping.wait(max(0.0, self.left_at[queue_id] + STALE_GET_SECONDS - time.monotonic()))
        self.reading[index] = queue_id
        return queue_id


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


def _fork_api_server(server: ls.LitServer, index: int, queue_id: int, port: int, log_level: str, sockets: list, kwargs: dict) -> Any:
    # As LitServer._start_server (litserve 0.2.19) starts each API server, for one index.
    server.app.response_queue_id = queue_id
    app = copy.copy(server.app)
    server._prepare_app_run(app)
    config = uvicorn.Config(
        app=app, host="0.0.0.0", port=port, log_level=log_level, timeout_graceful_shutdown=server.uvicorn_graceful_timeout, **kwargs
    )
    process = multiprocessing.get_context("fork").Process(target=_Server(config=config).run, args=(index, sockets), name=f"LitServer-{index}")
    process.start()
    return process
