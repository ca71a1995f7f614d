"""The API describes itself: optiserve's OpenAPI title and version, Swagger UI at /docs that works
offline, and an index at / that points to the docs, health and metrics.

LitServe builds the FastAPI app itself, titled "FastAPI 0.1.0", with docs pages that load their
assets from a CDN, "litserve running" at /, and /predict and /compare documented as answering
anything. So those routes are replaced once it is built.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute
from swagger_ui_bundle import swagger_ui_path
from wire.contract.models import ErrorBody

from ..inference.worker import CompareAPI, PredictAPI
from ..inference.schemas import CompareRequest, CompareResponse, PredictRequest, PredictResponse

ASSETS_URL = "/static/docs"
DESCRIPTION = (
    "Upload a TorchScript model and a calibration batch; a pipeline builds a measured-faster variant, "
    "and both serve side by side. Management routes need `Authorization: Bearer <key>`; inference is "
    "open unless the server runs with `--auth-inference`. Every error has the shape `{\"error\": {...}}`."
)
# path -> (summary, what a 200 holds)
INFERENCE_ROUTES = {
    PredictAPI.endpoint: ("Run a model on a batch of inputs", PredictResponse),
    CompareAPI.endpoint: ("Run both variants of a model and compare their outputs", CompareResponse),
}
# Unparseable body, --auth-inference, unknown model, variant not ready, body too large, bad inputs,
# model unhealthy, past the request deadline.
INFERENCE_ERRORS = (400, 401, 404, 409, 413, 422, 503, 504)


class ServiceIndex(BaseModel):
    """What `GET /` answers: where to go next."""

    service: str
    version: str
    links: dict[str, str] = Field(description="what each route is for, keyed by its path")


def describe_api(app: FastAPI) -> None:
    """Name the API, serve /docs from local assets and answer / with an index (call before run)."""
    app.title = "optiserve"
    app.version = version("optiserve")
    app.description = DESCRIPTION
    replaced = {"/", app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [route for route in app.router.routes if _path(route) not in replaced]
    # ReDoc and the OAuth2 redirect go too: the bundle ships no ReDoc, and no route uses OAuth2.
    app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    index = ServiceIndex(
        service=app.title,
        version=app.version,
        links={
            "/docs": "interactive API documentation (Swagger UI, served locally)",
            app.openapi_url: "the OpenAPI schema",
            "/health": "liveness: 200 while the server runs",
            "/ready": "readiness: 200 once the inference workers are up",
            "/metrics": "Prometheus metrics",
            "/models": "the uploaded models and their optimization state",
        },
    )

    async def service_index() -> ServiceIndex:
        return index

    async def swagger_ui(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, the page's URLs must carry that prefix.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url,
            title=f"{app.title} {app.version} - API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
        )

    app.add_api_route("/", service_index, methods=["GET"], response_model=ServiceIndex, summary="Where to go next")
    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    _document_inference_routes(app)
    _document_errors_as_json(app)


def _document_inference_routes(app: FastAPI) -> None:
    # An APIRoute derives its documented responses when it is built, so each is built again with them.
    errors = {status: {"model": ErrorBody} for status in INFERENCE_ERRORS}
    for route in [r for r in app.router.routes if isinstance(r, APIRoute) and r.path in INFERENCE_ROUTES]:
        summary, answer = INFERENCE_ROUTES[route.path]
        app.router.routes.remove(route)
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=list(route.methods),
            dependencies=route.dependencies,
            summary=summary,
            responses={200: {"model": answer}, **errors},
            openapi_extra=route.openapi_extra,  # the body schema of a route that reads its body itself
        )


def _document_errors_as_json(app: FastAPI) -> None:
    # Every error is JSON (errors.py), but FastAPI documents a route's errors in the media type of
    # its success (HTML for report.html, bytes for a variant download).
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _add_request_schemas(generate())
            for operation in (op for path in generate()["paths"].values() for op in path.values()):
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content")
                    if status[0] in "45" and content and "application/json" not in content:
                        response["content"] = {"application/json": next(iter(content.values()))}
        return app.openapi_schema

    app.openapi = openapi


def _add_request_schemas(schema: dict[str, Any]) -> None:
    # /predict and /compare parse their bodies themselves (predict_route.py), so FastAPI does not
    # collect the request models their documentation points to.
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (PredictRequest, CompareRequest):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(found.pop("$defs", {}))
        schemas.setdefault(model.__name__, found)


def _path(route: BaseRoute) -> str | None:
    return getattr(route, "path", None)
