"""Pydantic models of the Open Inference Protocol v2 REST bodies (KServe / Triton / MLServer)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# A tensor dimension; bounded so that shape arithmetic can never overflow or allocate absurdly.
Dimension = Annotated[int, Field(ge=0, le=2**31)]
MAX_DIMENSIONS = 16  # a tensor's (numpy's own limit is 64)
MAX_INPUTS = 64  # a request's


class _Lenient(BaseModel):
    # The protocol says unknown fields and parameters are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Lenient):
    name: str
    shape: list[Dimension] = Field(max_length=MAX_DIMENSIONS)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(_Lenient):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Lenient):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Lenient):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Lenient):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str = ""


class InferenceErrorResponse(BaseModel):
    """The protocol's error body; the management API's is wire.contract.models.ErrorBody."""

    error: str
