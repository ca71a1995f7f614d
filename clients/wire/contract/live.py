"""What live traffic says about a model: the record of each served request, and their summary in the
model's status (GET /models/{id}). The server's live window (server/live/window.py) computes the summary."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .routing import Guard

LIVE_VERSION = 1


class InputMoments(BaseModel):
    """One input of one request, against the calibration batch: z = (x - calibration mean) / calibration std."""

    values: int
    outside: int = Field(description="values outside the calibration batch's [min, max]")
    z_sum: float
    z_square_sum: float


class LiveSample(BaseModel):
    """One served request, as the worker records it (a row of the store's live table)."""

    version: int = LIVE_VERSION
    revision: int = Field(description="the routing revision it was served under; the guard judges the current one only")
    served: str
    served_ms: float
    other: str | None = Field(None, description="the variant also run on it (shadow or split sample)")
    other_ms: float | None = Field(None, description="the other variant's forward, in its thread's CPU time (ms)")
    agree: bool | None = Field(None, description="top-1 of every sample agreed (class-score outputs only)")
    cosine: float | None = None
    max_abs_diff: float | None = None
    inputs: list[InputMoments] = Field(default_factory=list)


class VariantLatency(BaseModel):
    variant: str
    clock: Literal["wall", "thread_cpu"] = Field(
        "wall",
        description="wall: forwards that answered requests; thread_cpu: shadow forwards, which run at the lowest "
        "priority, timed in their thread's CPU time (their wall time would measure the wait for a core)",
    )
    requests: int
    p50_ms: float
    p99_ms: float


class LiveFidelity(BaseModel):
    compared: int = Field(description="requests of the current routing revision run on both variants")
    agreement: float | None = None
    agreement_lower: float | None = Field(None, description="95% Wilson lower bound of the agreement")
    agreement_upper: float | None = Field(None, description="95% Wilson upper bound of the agreement")
    cosine_mean: float | None = None
    cosine_upper: float | None = Field(None, description="95% upper bound of the mean cosine")
    cosine_min: float | None = None
    max_abs_diff: float | None = None


class InputDrift(BaseModel):
    input: str
    values: int
    outside_range_share: float = Field(description="share of live values outside the calibration batch's range")
    mean_shift: float = Field(description="live mean minus calibration mean, in calibration standard deviations")
    std_ratio: float = Field(description="live standard deviation over the calibration batch's")
    warning: str | None = None


class GuardVerdict(BaseModel):
    guard: Guard
    state: Literal["off", "watching", "ok", "tripped"]
    reason: str


class LiveStatus(BaseModel):
    requests: int = Field(description="recent requests summarized (at most the guard's window)")
    latency: list[VariantLatency]
    speedup: float | None = Field(None, description="live p50 of the original over the optimized's, per forward call")
    fidelity: LiveFidelity
    drift: list[InputDrift]
    guard: GuardVerdict
    warnings: list[str] = Field(default_factory=list)
