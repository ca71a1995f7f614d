"""Assemble the LitServer: inference LitAPIs, management routes, middleware, lifespan; run it.

Imported only after server.main has set PROMETHEUS_MULTIPROC_DIR (metrics are created at import).
"""

from __future__ import annotations

import logging
import shutil
import multiprocessing
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from fastapi import Depends, FastAPI, HTTPException

from optimizer_pipeline import die_with_parent

from .jobs import confinement, runner as jobs
from .inference import shared_tensors
from .http.api_docs import describe_api
from .http.auth import BearerKey, KeyBeforeBodyMiddleware
from .dataplane import ManagementPlane, UploadLimits
from .errors import install_error_handlers
from .inference.worker import OVERSIZED, CompareAPI, PredictAPI, is_inference_path
from .http.limits import BodySizeLimitMiddleware, DeadlineMiddleware
from .litserve_bridge import (
    LitServer,
    QueueBridge,
    WorkerDeath,
    build_lit_server,
    is_first_api_server,
    managers_die_with_parent,
    quiet_monitor_shutdown,
    run_lit_server,
    supervise_api_servers,
    supervise_workers,
    take_over_route,
    workers_ready,
)
from .http.metrics_page import RequestMetricsMiddleware
from .oip_grpc import check_port_free, grpc_lifespan
from .http.oip_routes import OipRoutes
from .http.predict_route import PredictRoute
from .live.record_channel import RecordSender, RecordWriter
from .processes import interrupt_on_sigterm
from .http.routes import ManagementRoutes
from .inference.warm_up import marks_dir, reset_marks
from .live.routing_plane import RoutingPlane
from .settings import Settings
from .store import Store, open_store
from .jobs.validation import ValidationLimits

logger = logging.getLogger("optiserve")
# How often the main process looks for stale shared-memory segments (a dead API server is seen at once).
SUPERVISE_SECONDS = 5.0


def build_server(settings: Settings, store: Store, records: RecordSender) -> LitServer:
    # Spawned workers run model code: they get the settings without the key (the guard keeps it).
    apis = [PredictAPI(settings.without_secrets(), records), CompareAPI(settings.without_secrets(), records)]
    guard = BearerKey(settings.api_key.get_secret_value()) if settings.auth and settings.api_key else None
    workers = {PredictAPI.endpoint: settings.workers, CompareAPI.endpoint: settings.compare_workers}
    server = build_lit_server(apis, workers, settings.request_timeout, guard if guard and settings.auth_inference else None)
    app = server.app
    space = shared_tensors.space_for(settings.local_dir, settings.shm_budget_bytes)
    supervise_workers(server, settings.held_dir, lambda death: _worker_died(store, settings, death))
    # One bridge per API: a model's requests take turns in it whichever route they came by.
    bridges = {api.endpoint: QueueBridge(server, api.endpoint, api.max_batch_size) for api in apis}
    inference_dependencies = [Depends(guard)] if guard and settings.auth_inference else None
    for api in apis:  # JSON bodies read within max_json_bytes, and large ones parsed in the worker
        take_over_route(server, api.endpoint)
        PredictRoute(bridges[api.endpoint], settings.max_json_bytes, space, api.request_schema).install(app, inference_dependencies)
    predict_bridge = bridges[PredictAPI.endpoint]
    ready = lambda: workers_ready(server)  # noqa: E731

    describe_api(app)
    install_error_handlers(app)
    limits = ValidationLimits(settings.validation_timeout, settings.validation_memory_bytes, settings.validation_idle_seconds)
    parts = UploadLimits(settings.max_upload_bytes, settings.max_unlabeled_bytes)
    management = ManagementRoutes(ManagementPlane(store, limits, parts), RoutingPlane(store), ready, guard, marks_dir(settings.local_dir))
    app.include_router(management.router())
    oip = OipRoutes(store, predict_bridge, ready, space, settings.max_json_bytes, marks_dir(settings.local_dir))
    app.include_router(oip.router(), dependencies=inference_dependencies)
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes, upload_max_bytes=settings.max_upload_bytes + settings.max_unlabeled_bytes,
        is_inference_path=is_inference_path,
    )
    if guard is not None:  # outside the body limit: a stranger hears 401 before anything about the body
        app.add_middleware(
            KeyBeforeBodyMiddleware, guard=guard, keyed=management.keyed_routes(), guarded_inference=settings.auth_inference,
            is_inference_path=is_inference_path,
        )
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout, applies=is_inference_path)
    app.add_middleware(RequestMetricsMiddleware)  # added last = outermost: it also times rejections
    _wrap_lifespan(app, settings, grpc_lifespan(settings, oip, predict_bridge, guard))
    return server


def _worker_died(store: Store, settings: Settings, death: WorkerDeath) -> HTTPException | None:
    """In the main process: log an inference worker's end, count it against the model it ran, and
    return what the requests it held are answered (None: it held none)."""
    held, where = death.held, f"inference worker {death.worker_id} of {death.api_path} (pid {death.pid})"
    if held.failure is not None:  # it answered its batch and retired on purpose
        logger.warning("%s restarts: model %r failed (%s): %s", where, held.model, held.failure, held.reason)
        if held.failure != OVERSIZED:  # a request larger than the calibration batch is not the model's failure
            _count_failure(store, settings, held.model, held.failure, held.reason)
        return None
    if not held.requests:
        logger.warning("%s ended (%s) holding no request; a fresh one replaces it", where, death.how)
        return None
    message = (
        f"the inference worker running model {held.model!r} died ({death.how}) before answering; "
        "a fresh worker replaces it, and the crash counts towards the model's health"
    )
    logger.error("%s died (%s) running model %r; its %d request(s) get 503 worker_died", where, death.how, held.model, len(held.requests))
    _count_failure(store, settings, held.model, "crashes", message)
    return HTTPException(503, {"code": "worker_died", "message": message})


def _count_failure(store: Store, settings: Settings, ref: str, kind: str, reason: str) -> None:
    try:
        info = store.get(ref)
        if info is not None:
            store.record_failure(info.id, kind, reason, settings.unhealthy_after)
    except Exception:  # the requests must still be answered and the worker replaced
        logger.exception("could not count a failure of model %r", ref)


def _wrap_lifespan(app: FastAPI, settings: Settings, grpc: Callable[[], AbstractAsyncContextManager[None]] | None = None) -> None:
    # LitServe never runs on_event("startup"); wrapping the lifespan is the hook that does run.
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: FastAPI):
        die_with_parent()
        if is_first_api_server():
            print(f"optiserve is up at {settings.url}  (store: {settings.store_description})", flush=True)
        async with inner(instance) as state, (grpc or nullcontext)():
            yield state

    app.router.lifespan_context = lifespan


def run_server(settings: Settings) -> int:
    if settings.grpc_port and (problem := check_port_free(settings)):
        print(f"error: {problem}", flush=True)
        return 1
    store = open_store(settings)
    _recover(settings, store)
    reset_marks(settings.local_dir)  # warm marks of the last run's workers
    shutil.rmtree(settings.held_dir, ignore_errors=True)  # notes of a previous run's workers
    settings.held_dir.mkdir(parents=True)
    shared_tensors.sweep(shared_tensors.prefix_for(settings.local_dir))  # segments a crash or a late answer left
    print(confinement.describe(), flush=True)
    interrupt_on_sigterm()
    quiet_monitor_shutdown()
    managers_die_with_parent()
    runner = jobs.start_runner(settings.without_secrets()) if settings.jobs else None
    try:
        # Workers hold the index read-only; this thread writes their samples and timeouts.
        writer = RecordWriter(store, settings.unhealthy_after)
        server = build_server(settings, store, writer.sender)
        writer.start()
        prefix = shared_tensors.prefix_for(settings.local_dir)
        # No segment outlives its request's deadline by much: older ones are an answer nobody waited
        # for, or a request of an API server that died.
        stale = 2 * settings.request_timeout + 10
        supervise_api_servers(server, every=SUPERVISE_SECONDS, tick=lambda: shared_tensors.sweep(prefix, older_than=stale))
        run_lit_server(server, settings.host, settings.port, settings.api_servers, settings.log_level)
    except KeyboardInterrupt:
        pass
    finally:
        if runner is not None:
            jobs.stop(runner)
        _stop_leftover_children()
    return 0


def _recover(settings: Settings, store: Store) -> None:
    # An embedded store has this one server (it holds the lock): every job still optimizing was cut
    # short by its last run. A shared store's jobs may be running elsewhere: only lapsed leases count.
    if settings.shared:
        actions = store.requeue_expired(settings.job_attempts)
        orphans = store.sweep()  # files of uploads and jobs that crashed before their row committed
        if orphans:
            logger.warning("removed %d stored files that no model names", len(orphans))
    else:
        actions = store.recover(settings.job_attempts)
    for action in actions:
        logger.warning("recovered job %s", action)


def _stop_leftover_children() -> None:
    # LitServe shuts down what it started when run() gets that far; a stop during startup does not.
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
