"""A JSON inference body on its way from the API server to a worker: too large to parse in the API
server (see http/predict_route.py), it travels as bytes and the worker parses it with the route's
own rules, so an error reads the same wherever the body was parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from ..errors import validation_error_body
from .schemas import PredictRequest
from .shared_tensors import SharedBytes


class BodyError(Exception):
    """A body that failed to parse in the worker: its status and the error body to answer with."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


@dataclass
class JsonBody:
    """A JSON inference body the worker parses (too large to parse in the API server)."""

    data: Union[bytes, SharedBytes]
    routing_key: Union[str, None] = None  # the X-Routing-Key header

    def raw(self) -> bytes:
        return self.data.read() if isinstance(self.data, SharedBytes) else self.data

    def parse(self, schema: type[BaseModel]) -> BaseModel:
        """The request, validated as `schema`; BodyError (422, as the API server would answer) if it is not one."""
        try:
            request = schema.model_validate_json(self.raw())
        except ValidationError as exc:
            raise BodyError(422, validation_error_body(in_body(exc))) from None
        return with_routing_key(request, self.routing_key)


def with_routing_key(request: BaseModel, header: str | None) -> BaseModel:
    """The request with the X-Routing-Key header as its routing key, unless its body sets one."""
    if isinstance(request, PredictRequest) and request.routing_key is None and header is not None:
        request.routing_key = header
    return request


def in_body(exc: ValidationError) -> list[dict[str, Any]]:
    """A body's validation errors, located as FastAPI locates them."""
    # FastAPI's shape: every location starts at "body" (server/errors.py strips it again for the message).
    return [{**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors(include_input=False, include_url=False)]
