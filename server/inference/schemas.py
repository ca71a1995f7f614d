"""Pydantic models of the /predict, /compare, promote and health bodies.

The bodies a client reads as well are the contract (wire.contract): model records, live status, report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wire.contract.report import Fidelity
from wire.contract.routing import VariantName
from wire.schemas import MAX_DIMENSIONS, Dimension

# Open Inference Protocol tensor datatypes that torch can hold (inference/tensors.py maps each to its torch dtype).
Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64"]


class TensorObject(BaseModel):
    """An Open Inference Protocol tensor: `data` is the flat row-major list.

    Binary extension: `data_b64` instead of `data` holds the raw little-endian bytes, base64-encoded;
    exact and ~20x cheaper than JSON numbers for large tensors.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    shape: list[Dimension] = Field(max_length=MAX_DIMENSIONS)
    datatype: Datatype
    data: list[Any] | None = None
    data_b64: str | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> TensorObject:
        if (self.data is None) == (self.data_b64 is None):
            raise ValueError("give exactly one of `data` (flat list) or `data_b64` (base64 raw bytes)")
        if any(size < 0 for size in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        return self


class CompareRequest(BaseModel):
    """The /compare body; /predict's (PredictRequest) adds the variant and a routing key."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model id or name")
    inputs: list[TensorObject | list[Any]] = Field(
        min_length=1, description="one entry per positional model input: a tensor object or a nested list"
    )
    binary_outputs: bool = Field(False, description="return outputs as `data_b64` instead of `data`")


class PredictRequest(CompareRequest):
    variant: VariantName | None = Field(None, description="default: the model's routing policy decides (without one: optimized when ready, else original)")
    routing_key: str | None = Field(
        None, max_length=256, description="sticky split: the same key always gets the same variant (the X-Routing-Key header sets it too)"
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # NaN outputs stay NaN, not null

    model: str
    variant: VariantName
    outputs: list[TensorObject]
    inference_ms: float = Field(description="forward time of the batch that served this request")
    casts: list[str] | None = Field(None, description="inputs cast to the model's dtype, e.g. 'input x: float64 -> float32'")


class CompareResponse(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")

    model: str
    outputs: dict[VariantName, list[TensorObject]]
    inference_ms: dict[VariantName, float]
    fidelity: Fidelity = Field(description="optimized against original, on this request's inputs")

