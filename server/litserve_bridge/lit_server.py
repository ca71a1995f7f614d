"""The LitServer and the LitAPI base our inference APIs build on, and the process-wide hooks LitServe needs from us."""

from __future__ import annotations

import logging
import os
import multiprocessing
import warnings
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import litserve as ls
from litserve.utils import WorkerSetupStatus

from optimizer_pipeline import die_with_parent

from .batching import GreedyBatchLoop, HeldRecord, held_record_path
from .channels import current_worker_id, use_direct_transport
from .queue_bridge import drop_gzip

LitServer = ls.LitServer  # for annotations outside the bridge


class BridgedAPI(ls.LitAPI):
    """An inference API as LitServe runs it: one worker takes one group item at a time (GreedyBatchLoop),
    the payloads it gets are what our routes put on the queue, and what `encode_response` returns is
    what the route answers. Subclasses implement `predict` and `encode_response`."""

    def __init__(self, api_path: str, max_batch_size: int) -> None:
        with warnings.catch_warnings():
            # Every API shares batch/unbatch code; some deliberately take one request at a time.
            warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch methods")
            super().__init__(
                max_batch_size=max_batch_size,
                batch_timeout=0.0,  # GreedyBatchLoop never waits for a batch to fill
                api_path=api_path,
                loop=GreedyBatchLoop(),
            )

    def keep_held_record(self, held_dir: Path) -> None:
        """In the worker's setup: write what this worker holds where the main process looks when it dies."""
        self.loop.record = HeldRecord(held_record_path(held_dir, self.api_path, current_worker_id()))

    def answered(self) -> None:
        """After a batch's answers have left the worker: work that need not delay them."""

    def decode_request(self, request):  # noqa: ANN001, ANN201
        # Our routes put decoded payloads on the queue (see QueueBridge): nothing is left to decode.
        # Unannotated on purpose: LitServe builds the route it makes for the API (which
        # take_over_route removes) from this annotation, and a string one (postponed) breaks it.
        return request

    def batch(self, inputs: list) -> list:
        return list(inputs)

    def unbatch(self, output: list) -> list:
        return list(output)


def build_lit_server(apis: list[BridgedAPI], workers: dict[str, int], timeout: float, authorize: Callable[..., Any] | None) -> ls.LitServer:
    """A LitServer for `apis` (`workers`: how many workers each API path gets) without LitServe's gzip."""
    if authorize is not None:
        for api in apis:
            # LitServe's hook: a FastAPI dependency of the API's own route and of its /, health and
            # info routes (the first API's), which stay LitServe's.
            api.authorize = authorize
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        workers_per_device=workers,
        timeout=timeout,
        # Ours are /health (live) and /ready (workers up), with JSON bodies; LitServe's move aside.
        healthcheck_path="/_litserve/health",
        info_path="/_litserve/info",
        restart_workers=True,
    )
    drop_gzip(server)
    use_direct_transport(server)
    return server


def run_lit_server(server: ls.LitServer, host: str, port: int, api_servers: int, log_level: str) -> None:
    """Run the server until it stops: `api_servers` API server processes, and the inference workers."""
    # LitServe would write a client.py into the working directory first.
    server.run(host=host, port=port, num_api_servers=api_servers, log_level=log_level, generate_client_file=False)


def workers_ready(server: ls.LitServer) -> bool:
    """Whether every inference worker has finished its setup."""
    # A Manager dict LitServe shares with the workers; it exists once run() has started them.
    status = getattr(server, "workers_setup_status", None)
    return bool(status) and all(value == WorkerSetupStatus.READY for value in status.values())


def is_first_api_server() -> bool:
    """In an API server process: whether it is the first of them (the one to say the server is up)."""
    # By index, not by response queue: a restarted API server reads a spare queue (see supervision.py).
    return os.environ.get("LITSERVE_WORKER_ID", "0") == "0"


class _QuietMonitorShutdown(logging.Filter):
    """LitServe's worker-monitor thread logs a crash when the Manager it polls shuts down at exit."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage() == "Monitoring worker crashed" and isinstance(error, (OSError, EOFError)))


def quiet_monitor_shutdown() -> None:
    """Drop LitServe's "Monitoring worker crashed" log line of a normal exit (see _QuietMonitorShutdown)."""
    logging.getLogger("litserve.server").addFilter(_QuietMonitorShutdown())


def _manager_that_dies_with_parent() -> SyncManager:
    # LitServe's queues live in a multiprocessing Manager it starts with `mp.Manager()`; that
    # process would outlive a kill -9 of the main process. Same manager, plus PR_SET_PDEATHSIG.
    manager = SyncManager(ctx=multiprocessing.get_context())
    manager.start(initializer=die_with_parent)
    return manager


def managers_die_with_parent() -> None:
    """Before run(): the Manager LitServe starts (looked up as `multiprocessing.Manager` at run()) dies with this process.

    Process-wide: every later `multiprocessing.Manager()` in this process gets it too; the server's
    main process starts no other."""
    multiprocessing.Manager = _manager_that_dies_with_parent
