"""The management API's bodies (/models and below) and the model records the store keeps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .live import LiveFidelity, LiveStatus
from .report import Chosen, ModelSummary, Runtime
from .routing import Guard, RoutingPolicy, VariantName, default_guard

JobState = Literal["queued", "optimizing", "ready", "failed"]


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="stable machine-readable kind, e.g. invalid_model, not_found")
    message: str = Field(description="what is wrong and how to fix it")
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """The one shape of every error response of the management API and /predict (the Open Inference
    Protocol's routes answer its own: wire.schemas.InferenceErrorResponse)."""

    error: ErrorDetail


class ModelMeta(BaseModel):
    """What an upload is: written to <store>/models/<id>/model.json and indexed in SQLite."""

    id: str
    name: str
    created_at: str
    summary: ModelSummary
    config: dict[str, Any] | None = Field(
        None, description="the pipeline config as uploaded, with its version (a config stored without one is version 1)"
    )
    has_labels: bool = False
    has_unlabeled: bool = Field(False, description="an unlabeled set was uploaded (stored as unlabeled.bin, used by the optimization)")

    @field_validator("config")
    @classmethod
    def _versioned(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        # Configs were stored without a version before there were versions: those are version 1.
        return {**config, "version": 1} if config is not None and "version" not in config else config


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

    @property
    def finished(self) -> bool:
        return self.state in ("ready", "failed")


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


class PromoteRequest(BaseModel):
    """POST /models/{id}/promote and /rollback: the event log's reason."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500, description="why, for the event log")


class ServiceStatus(BaseModel):
    """GET /health and /ready."""

    status: Literal["ok", "starting"]
