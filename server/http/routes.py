"""The management route table. Handlers only translate HTTP to ManagementPlane calls and back.

These routes run in LitServe's API-server processes. Slow work (upload validation, SQLite, files)
goes to the thread pool, so the event loop keeps serving /predict meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Query, Security, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from wire.contract.models import Deleted, ErrorBody, ModelInfo, ModelList, ModelStatus, PromoteRequest, RoutingEvents, ServiceStatus, UploadAccepted
from wire.contract.routing import Guard, RoutingPolicy

from . import metrics_page
from .auth import BearerKey
from ..dataplane import ManagementPlane, Upload
from ..errors import ApiError, JsonResponse
from ..inference import oversized
from ..inference.warm_up import Info, serving_state
from ..live.routing_plane import RoutingPlane

ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 422)}
# Declares the key in the OpenAPI schema, so /docs offers "Authorize" and clients know which routes
# need it; it checks nothing (auto_error=False): BearerKey does, with one error shape and in constant time.
BEARER_SCHEME = HTTPBearer(auto_error=False, description="the server's API key (OPTISERVE_API_KEY or <store>/api-key)")


class BinaryFileResponse(Response):
    media_type = "application/octet-stream"


# Routes whose 200 is not JSON. The class tells the OpenAPI schema only: the handlers build their own responses.
NON_JSON = {
    "/models/{model_id}/report.html": HTMLResponse,
    "/models/{model_id}/variants/{variant}": BinaryFileResponse,
    "/metrics": PlainTextResponse,
}
# Errors a route answers besides ERRORS.
MORE_ERRORS = {"/ready": {503: {"model": ErrorBody, "description": "the inference workers are still starting"}}}


class ManagementRoutes:
    def __init__(
        self, plane: ManagementPlane, routing: RoutingPlane, workers_ready: Callable[[], bool], guard: BearerKey | None, warm_marks: Path | None = None
    ) -> None:
        self.plane = plane
        self.routing = routing
        self.workers_ready = workers_ready
        self.guard = guard
        self.warm_marks = warm_marks  # where the /predict workers say what they have warmed; None: no warm-up wait

    def keyed_routes(self) -> list[tuple[str, str]]:
        """(method, path template) of the routes that need the key."""
        return [(method, path) for method, path, _, _, _, needs_key in self._table() if needs_key]

    def router(self) -> APIRouter:
        router = APIRouter(default_response_class=JsonResponse, responses=ERRORS)
        for method, path, handler, response_model, status, needs_key in self._table():
            dependencies = [Depends(self.guard), Security(BEARER_SCHEME)] if needs_key and self.guard else None
            router.add_api_route(
                path,
                handler,
                methods=[method],
                response_model=response_model,
                status_code=status,
                dependencies=dependencies,
                response_class=NON_JSON.get(path, JsonResponse),
                responses=MORE_ERRORS.get(path),
            )
        return router

    def _table(self) -> list[tuple[str, str, Callable, type | None, int, bool]]:
        # The last column: does the route change a model or hand out its files (so it needs the key)?
        return [
            ("POST", "/models", self.create_model, UploadAccepted, 202, True),
            ("GET", "/models", self.list_models, ModelList, 200, False),
            ("GET", "/models/{model_id}", self.get_model, ModelStatus, 200, False),
            ("PUT", "/models/{model_id}/routing", self.set_routing, ModelStatus, 200, True),
            ("PUT", "/models/{model_id}/guard", self.set_guard, ModelStatus, 200, True),
            ("POST", "/models/{model_id}/promote", self.promote, ModelStatus, 200, True),
            ("POST", "/models/{model_id}/rollback", self.roll_back, ModelStatus, 200, True),
            ("GET", "/models/{model_id}/events", self.events, RoutingEvents, 200, False),
            ("GET", "/models/{model_id}/report", self.get_report, None, 200, False),
            ("GET", "/models/{model_id}/report.html", self.get_report_html, None, 200, False),
            ("GET", "/models/{model_id}/variants/{variant}", self.download_variant, None, 200, True),
            ("DELETE", "/models/{model_id}", self.delete_model, Deleted, 200, True),
            ("POST", "/models/{model_id}/reset", self.reset_model, ModelInfo, 200, True),
            ("GET", "/health", self.health, ServiceStatus, 200, False),
            ("GET", "/ready", self.ready, ServiceStatus, 200, False),
            ("GET", "/metrics", self.metrics, None, 200, False),
        ]

    async def create_model(
        self,
        model: UploadFile = File(description="TorchScript archive (torch.jit.save)"),
        calibration: UploadFile = File(description="calibration batch: torch.save Tensor/tuple/dict, .npy or .npz"),
        labels: UploadFile | None = File(None, description="int64 class ids, one per calibration sample"),
        config: str | None = Form(None, description="pipeline config as a JSON object"),
        name: str | None = Form(None, description="[a-z0-9._-], at most 64; default: from the file name"),
        replace: bool = Form(False, description="replace the model that has this name"),
        unlabeled: UploadFile | None = File(
            None,
            description="optional unlabeled set: any number of inputs in the calibration batch's layout (same file formats); "
            "feeds distillation and reconstruction and certifies fidelity; streamed to disk, at most OPTISERVE_MAX_UNLABELED_BYTES",
        ),
    ) -> UploadAccepted:
        # Sizes are checked before any part is read into memory (the multipart parser spooled them to disk).
        if self.plane.parts is not None:
            sizes = {"model": model.size, "calibration": calibration.size, "labels": labels.size if labels else None}
            self.plane.parts.check(sizes | {"unlabeled": unlabeled.size if unlabeled else None})
        upload = Upload(
            model=await model.read(),
            calibration=await calibration.read(),
            labels=await labels.read() if labels is not None else None,
            config=config,
            name=name,
            filename=model.filename,
            replace=replace,
            unlabeled=unlabeled.file if unlabeled is not None else None,
        )
        return await run_in_threadpool(self.plane.create_model, upload)

    async def list_models(self) -> ModelList:
        return ModelList(models=await run_in_threadpool(lambda: [self._serving(info) for info in self.plane.list_models()]))

    async def get_model(self, model_id: str) -> ModelStatus:
        return await run_in_threadpool(lambda: self._serving(self.routing.status(model_id)))

    def _serving(self, info: Info) -> Info:
        # "ready" means the first request pays no load: the workers have warmed the variants.
        return info if self.warm_marks is None else serving_state(info, self.warm_marks)

    async def set_routing(self, model_id: str, policy: RoutingPolicy) -> ModelStatus:
        return await run_in_threadpool(self.routing.set_routing, model_id, policy)

    async def set_guard(self, model_id: str, guard: Guard) -> ModelStatus:
        return await run_in_threadpool(self.routing.set_guard, model_id, guard)

    async def promote(self, model_id: str, request: PromoteRequest | None = None) -> ModelStatus:
        return await run_in_threadpool(self.routing.promote, model_id, request.reason if request else "")

    async def roll_back(self, model_id: str, request: PromoteRequest | None = None) -> ModelStatus:
        return await run_in_threadpool(self.routing.roll_back, model_id, request.reason if request else "")

    async def events(self, model_id: str, limit: int = Query(100, ge=1, le=10000, description="the newest this many")) -> RoutingEvents:
        return RoutingEvents(events=await run_in_threadpool(self.routing.events, model_id, limit))

    async def get_report(self, model_id: str) -> Response:
        path = await run_in_threadpool(self.plane.report_path, model_id)
        return FileResponse(path, media_type="application/json")

    async def get_report_html(self, model_id: str) -> Response:
        return HTMLResponse(await run_in_threadpool(self.plane.report_html, model_id))

    async def download_variant(self, model_id: str, variant: str) -> Response:
        info, path = await run_in_threadpool(self.plane.variant_path, model_id, variant)
        return FileResponse(path, media_type="application/octet-stream", filename=f"{info.name}-{path.name}")

    async def delete_model(self, model_id: str) -> Deleted:
        return await run_in_threadpool(self.plane.delete, model_id)

    async def reset_model(self, model_id: str) -> ModelInfo:
        info = await run_in_threadpool(self.plane.reset_health, model_id)
        if self.warm_marks is not None:
            oversized.lift(self.warm_marks, info.id)
        return info

    async def health(self) -> ServiceStatus:
        return ServiceStatus(status="ok")

    async def ready(self) -> ServiceStatus:
        if not self.workers_ready():
            raise ApiError(503, "not_ready", "inference workers are still starting")
        return ServiceStatus(status="ok")

    async def metrics(self) -> Response:
        body = await run_in_threadpool(metrics_page.render, self.plane.store)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
