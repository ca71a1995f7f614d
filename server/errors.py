"""One JSON error shape for every failure: ours, the pipeline's, FastAPI's validation, LitServe's."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from optimizer_pipeline import OptimizerError
from wire.contract.models import ErrorBody, ErrorDetail


logger = logging.getLogger("optiserve")
OIP_PREFIX = "/v2"


class JsonResponse(JSONResponse):
    """JSON that keeps Infinity/NaN (e.g. an exact variant's SQNR, or a model's -inf logits) instead of failing."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")


class ApiError(Exception):
    """An error we raise on purpose; `code` is stable, `message` tells the user what to fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(ref: str) -> ApiError:
    return ApiError(404, "model_not_found", f"no model with id or name {ref!r}; GET /models lists them")


def error_body(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body = ErrorBody(error=ErrorDetail(status=status, code=code, message=message, details=details))
    return body.model_dump(mode="json", exclude_none=True)


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JsonResponse:
    """Our error shape, or the Open Inference Protocol's `{"error": message}` under /v2 (its clients read that key)."""
    if path.startswith(OIP_PREFIX):
        return JsonResponse({"error": message}, status_code=status, headers=headers)
    return JsonResponse(error_body(status, code, message, details), status_code=status, headers=headers)


def from_api_error(error: ApiError, headers: dict[str, str] | None = None, path: str = "") -> JsonResponse:
    return error_response(error.status, error.code, error.message, headers=headers, path=path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(OptimizerError, _optimizer_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, exc: ApiError) -> JsonResponse:
    return from_api_error(exc, path=request.url.path)


def optimizer_error_code(exc: OptimizerError) -> str:
    """'invalid_calibration' for InvalidCalibrationError: the stable code of a pipeline error."""
    return _snake(type(exc).__name__.removesuffix("Error"))


async def _optimizer_error(request: Request, exc: OptimizerError) -> JsonResponse:
    return error_response(exc.http_status, optimizer_error_code(exc), str(exc), path=request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JsonResponse:
    message, details = _validation_problems(exc.errors())
    return error_response(422, "invalid_request", message, details, path=request.url.path)


def validation_error_body(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 422 body of a request that failed validation: where the API server's handler and a worker's parse agree."""
    return error_body(422, "invalid_request", *_validation_problems(errors))


def _validation_problems(errors: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    problems = [_describe(error) for error in errors]
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    return "invalid request: " + "; ".join(problems), details


async def _http_error(request: Request, exc: StarletteHTTPException) -> JsonResponse:
    # LitServe reports queue timeouts (504), payload limits (413) and worker crashes (500) this way;
    # our workers too, with a {"code", "message"} detail, when they answer from outside predict.
    detail = exc.detail
    if isinstance(detail, dict) and {"code", "message"} <= detail.keys():
        code, message = detail["code"], detail["message"]
    else:
        code = status_code_name(exc.status_code)
        message = detail if isinstance(detail, str) else json.dumps(detail)
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None), path=request.url.path)


async def _unexpected_error(request: Request, exc: Exception) -> JsonResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        500, "internal_error", f"internal error ({type(exc).__name__}); the server log has details", path=request.url.path
    )


def status_code_name(status: int) -> str:
    """'content_too_large' for 413: the code of errors that only have an HTTP status."""
    try:
        return _snake(HTTPStatus(status).phrase.replace(" ", "").replace("-", ""))
    except ValueError:
        return "http_error"


def _describe(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "decode error")
        position = error.get("loc", ("", "?"))[-1]
        # json.loads gives a character position; pydantic's parser puts line and column in its reason.
        return f"the body is not valid JSON ({reason} at character {position})" if isinstance(position, int) else f"the body is not valid JSON ({reason})"
    # 'body' prefixes every body field; users know their own field names without it.
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{location or 'body'}: {error.get('msg', 'invalid')}"


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))
