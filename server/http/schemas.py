"""Pydantic models of everything that crosses HTTP or is written to the store."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from optimizer_pipeline import Chosen, Fidelity, ModelSummary, Runtime, StoredConfig
from wire.schemas import Dimension

from ..live.window import LiveFidelity, LiveStatus, default_guard
from ..live.routing import Guard, RoutingPolicy

JobState = Literal["queued", "optimizing", "ready", "failed"]
VariantName = Literal["original", "optimized"]
# Used with fullmatch: `$` alone would let a trailing newline through.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# Open Inference Protocol tensor datatypes that torch can hold (inference/tensors.py maps each to its torch dtype).
Datatype = Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64"]


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="stable machine-readable kind, e.g. invalid_model, not_found")
    message: str = Field(description="what is wrong and how to fix it")
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail


class ModelMeta(BaseModel):
    """What an upload is: written to <store>/models/<id>/model.json and indexed in SQLite."""

    id: str
    name: str
    created_at: str
    summary: ModelSummary
    config: StoredConfig | None = Field(
        None, description="the pipeline config as uploaded, with its version (a config stored without one is version 1)"
    )
    has_labels: bool = False
    has_unlabeled: bool = Field(False, description="an unlabeled set was uploaded (stored as unlabeled.bin, used by the optimization)")


class VariantInfo(BaseModel):
    name: VariantName
    runtime: Runtime
    filename: str
    size_bytes: int
    version: int = Field(description="changes whenever the variant's file changes; workers reload on change")


class JobStatus(BaseModel):
    state: JobState
    stage: str | None = None
    progress: float = Field(0.0, description="0..1 within the current optimization")
    error: str | None = Field(None, description="why the optimization failed (the original still serves)")
    attempts: int = 0
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    optimization_seconds: float | None = None
    chosen: Chosen | None = Field(None, description="the served candidate, its measured speed-up and fidelity")
    notes: list[str] = Field(default_factory=list)


FailureKind = Literal["timeouts", "crashes", "out_of_memory"]
# Each kind of failure of a model's code that counts towards OPTISERVE_UNHEALTHY_AFTER, as the reason names it.
FAILURE_KINDS: dict[str, str] = {"timeouts": "past the time limit", "crashes": "crashed their worker", "out_of_memory": "over the memory cap"}


class Health(BaseModel):
    healthy: bool = True
    reason: str | None = Field(None, description="why the model stopped serving (503) until it is reset or replaced")
    timeouts: int = Field(0, description="forward calls that ran past the hard limit (OPTISERVE_FORWARD_TIMEOUT)")
    crashes: int = Field(0, description="inference workers that died running this model (503 worker_died)")
    out_of_memory: int = Field(0, description="forward calls stopped by the worker memory cap (OPTISERVE_WORKER_MEMORY_BYTES)")


class ModelInfo(ModelMeta, JobStatus):
    variants: list[VariantInfo]
    default_variant: VariantName = Field(description="what /predict serves when no variant is asked for and no routing policy applies")
    health: Health = Field(default_factory=Health)
    routing: RoutingPolicy | None = Field(None, description="set with PUT /models/{id}/routing; none: the default variant serves")
    guard: Guard | None = Field(None, description="set with PUT /models/{id}/guard; none: the model's optimization tolerance")
    routing_revision: int = Field(0, description="counts routing changes; live fidelity is judged per revision")

    def variant(self, name: str) -> VariantInfo | None:
        return next((v for v in self.variants if v.name == name), None)

    def effective_guard(self) -> Guard:
        return self.guard or default_guard(self.config, self.summary.output_shapes)


class ModelStatus(ModelInfo):
    """GET /models/{id}: the model, plus what its live traffic shows."""

    live: LiveStatus
    stage_seconds: dict[str, float] | None = Field(
        None, description="wall time per optimization stage, from the report (once the optimization is ready)"
    )


class RoutingEvent(BaseModel):
    """A change of a model's routing or guard, by a user or by the guard itself (GET /models/{id}/events)."""

    version: int = 1
    at: str
    kind: Literal["routing", "guard", "promote", "rollback"]
    trigger: Literal["user", "guard"]
    reason: str
    routing: RoutingPolicy | None = Field(None, description="the policy after the event")
    guard: Guard | None = Field(None, description="the guard after the event (guard events)")
    fidelity: LiveFidelity | None = Field(None, description="the live evidence at the time (guard rollbacks)")


class RoutingEvents(BaseModel):
    events: list[RoutingEvent]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500, description="why, for the event log")


class ModelList(BaseModel):
    models: list[ModelInfo]


class UploadAccepted(BaseModel):
    id: str
    name: str
    state: JobState
    status_url: str
    replaced: str | None = Field(None, description="id of the model this upload replaced (replace=true)")


class Deleted(BaseModel):
    id: str
    deleted: bool = True


class TensorObject(BaseModel):
    """An Open Inference Protocol tensor: `data` is the flat row-major list.

    Binary extension: `data_b64` instead of `data` holds the raw little-endian bytes, base64-encoded;
    exact and ~20x cheaper than JSON numbers for large tensors.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    shape: list[Dimension] = Field(max_length=16)
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


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model id or name")
    inputs: list[TensorObject | list[Any]] = Field(
        min_length=1, description="one entry per positional model input: a tensor object or a nested list"
    )
    binary_outputs: bool = Field(False, description="return outputs as `data_b64` instead of `data`")


class PredictRequest(InferenceRequest):
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


class ServiceStatus(BaseModel):
    status: Literal["ok", "starting"]
