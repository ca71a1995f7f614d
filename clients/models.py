"""Typed results of the Python client. Kept apart from the server's schemas so that importing the
client does not import torch or LitServe; extra fields the server adds are kept, not rejected."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True, protected_namespaces=())


class UploadResult(_Lenient):
    id: str
    name: str
    state: str
    status_url: str
    replaced: str | None = None


class FidelitySummary(_Lenient):
    """Optimized against original: top-1 agreement (class scores only), cosine, SQNR, max abs difference."""

    agreement: float | None = None
    cosine: float
    cosine_min: float
    sqnr_db: float
    max_abs_error: float


class ChosenCandidate(_Lenient):
    candidate: str
    reason: str
    speedup: float | None = None
    fidelity: FidelitySummary | None = None


class VariantStatus(_Lenient):
    name: str
    runtime: str
    size_bytes: int


class VariantLatency(_Lenient):
    variant: str
    clock: str = "wall"  # "thread_cpu": a shadow forward, timed in its thread's CPU time
    requests: int
    p50_ms: float
    p99_ms: float


class LiveFidelity(_Lenient):
    compared: int
    agreement: float | None = None
    agreement_lower: float | None = None
    agreement_upper: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs_diff: float | None = None


class InputDrift(_Lenient):
    input: str
    values: int
    outside_range_share: float
    mean_shift: float
    std_ratio: float
    warning: str | None = None


class GuardVerdict(_Lenient):
    guard: dict[str, Any]
    state: str
    reason: str


class LiveStatus(_Lenient):
    """What the model's live traffic shows: latency per variant, fidelity, input drift, the guard's verdict."""

    requests: int
    latency: list[VariantLatency]
    speedup: float | None = None
    fidelity: LiveFidelity
    drift: list[InputDrift]
    guard: GuardVerdict
    warnings: list[str] = []


class RoutingEvent(_Lenient):
    at: str
    kind: str
    trigger: str
    reason: str
    routing: dict[str, Any] | None = None
    fidelity: LiveFidelity | None = None


class ModelStatus(_Lenient):
    id: str
    name: str
    state: str
    stage: str | None = None
    progress: float = 0.0
    error: str | None = None
    variants: list[VariantStatus]
    default_variant: str
    chosen: ChosenCandidate | None = None
    routing: dict[str, Any] | None = None
    live: LiveStatus | None = None  # GET /models/{id} only
    stage_seconds: dict[str, float] | None = None  # GET /models/{id} of a ready model only

    @property
    def finished(self) -> bool:
        return self.state in ("ready", "failed")


class Prediction(_Lenient):
    model: str
    variant: str
    outputs: dict[str, Any]  # name -> torch.Tensor, in the model's output order
    inference_ms: float

    @property
    def output(self) -> Any:
        """The first (often the only) output tensor."""
        return next(iter(self.outputs.values()))


class Comparison(_Lenient):
    model: str
    outputs: dict[str, dict[str, Any]]  # variant -> output name -> torch.Tensor
    inference_ms: dict[str, float]
    fidelity: FidelitySummary
