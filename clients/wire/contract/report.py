"""The optimization report's model: what the pipeline writes to report.json, the server serves at
/models/{id}/report and the client reads."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema

# The runtimes a variant can be served on (one module each in optimizer_pipeline/runtimes/).
Runtime = Literal["torchscript", "onnxruntime", "openvino", "exported"]
# The format an upload came in: a TorchScript archive or a torch.export program (.pt2).
ModelFormat = Literal["torchscript", "exported"]
# What an output is taken to be (outputs.py decides), and so what it is judged by.
OutputKind = Literal["class_scores", "regression", "embedding", "other"]
# met: the one-sided 95% bound clears the threshold (certified); missed: the observed value does not
# meet it; undecided: observed within, but too few held-out samples to certify it.
Verdict = Literal["met", "undecided", "missed"]


def _finite_or_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")


# A metric that may be infinite (an exact candidate's SQNR) or NaN. JSON has no such numbers, so in
# report.json and over HTTP alike they travel as the strings "Infinity", "-Infinity" and "NaN",
# which read back as floats; the schema says so.
Metric = Annotated[
    float,
    PlainSerializer(_finite_or_text, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "enum": ["Infinity", "-Infinity", "NaN"]}]}, mode="serialization"),
]


class OutputJudgement(BaseModel):
    """How one output is judged, and why: decided once per model, from the original's outputs."""

    name: str
    kind: OutputKind
    judged_by: Literal["agreement", "cosine", "accuracy_drop", "sqnr_db"]
    reason: str


class OutputFidelity(BaseModel):
    """How closely one output tensor of a candidate matches the original, over held-out samples."""

    name: str
    shape: list[int]
    agreement: float | None = Field(None, description="top-1 agreement, measured on any [N, C] output; judged only on class scores")
    cosine_mean: Metric
    cosine_min: Metric
    cosine_std: float | None = Field(None, description="sample standard deviation of the per-sample cosine; absent before version 4")
    sqnr_db: Metric = Field(description="signal-to-quantization-noise ratio; higher is better, Infinity if exact")
    max_abs_error: Metric
    kind: OutputKind | None = Field(None, description="what the output was taken to be; absent before version 4")
    judged_by: str | None = Field(None, description="the metric this output was judged by")
    bound: float | None = Field(None, description="one-sided 95% lower bound of the judged metric over the held-out samples")
    verdict: Verdict | None = None
    more_samples: int | None = Field(None, description="undecided only: further held-out samples (at the same observed value) that would settle it")


class Fidelity(BaseModel):
    samples: int
    outputs: list[OutputFidelity]
    agreement: float | None = Field(None, description="worst top-1 agreement over class-score outputs")
    cosine: Metric = Field(description="worst mean cosine over outputs")
    cosine_min: Metric
    sqnr_db: Metric
    max_abs_error: Metric
    accuracy: float | None = Field(None, description="candidate accuracy on held-out labels")
    accuracy_original: float | None = None
    accuracy_drop: float | None = Field(None, description="original accuracy minus candidate accuracy")
    verdict: Verdict | None = Field(None, description="the tolerance's verdict over every output; absent before version 4")
    more_samples: int | None = Field(None, description="undecided only: further held-out samples that would settle every output")


class LatencyStats(BaseModel):
    median_ms: float
    p90_ms: float
    runs: int


class LatencyComparison(BaseModel):
    """Original and candidate timed in one process, taking turns, at one batch size."""

    batch_size: int
    original: LatencyStats
    candidate: LatencyStats
    speedup: float = Field(description="original median / candidate median")


class AloneTiming(BaseModel):
    """A finalist and the original, each timed in its own fresh process, taking turns (latency_alone.py)."""

    batch_size: int
    processes: int = Field(description="fresh processes per variant")
    calls: int = Field(description="timed calls in each process")
    original_ms: list[float] = Field(description="the original's median in each of its processes")
    candidate_ms: list[float] = Field(description="the candidate's median in each of its processes")
    speedup: float = Field(description="median of original_ms / median of candidate_ms: the figure the choice ranks on")
    in_process_speedup: float | None = Field(None, description="what the in-process timing had said")


class CandidateReport(BaseModel):
    name: str
    plan: list[dict[str, Any]]
    runtime: Runtime = "torchscript"
    status: Literal["ok", "failed", "skipped"]
    origin: Literal["candidate", "first", "space", "fallback", "compound"] = "candidate"
    error: str | None = Field(None, description="why it failed, or why it was skipped")
    failed_pass: str | None = None
    fidelity: Fidelity | None = None
    latency: list[LatencyComparison] = Field(default_factory=list)
    speedup: float | None = Field(None, description="speed-up at the target batch size")
    size_bytes: int | None = None
    meets_tolerance: bool = Field(False, description="observed within the tolerance (verdict met or undecided)")
    certified: bool | None = Field(None, description="the one-sided 95% bound clears the tolerance on every output; absent before version 4")
    timed_alone: AloneTiming | None = Field(None, description="finalists only; their speed-up is this per-process figure")
    fidelity_folds: list[float] = Field(default_factory=list, description="the tolerance metric on each fold")
    fidelity_mean: float | None = None
    fidelity_std: float | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="what each pass reported")
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class ModelSummary(BaseModel):
    class_name: str | None = Field(None, description="the TorchScript module's class; absent before report version 2")
    inputs: list[str]
    input_shapes: list[list[int]]
    input_dtypes: list[str]
    outputs: list[str]
    output_shapes: list[list[int]]
    output_dtypes: list[str] = Field(default_factory=list, description="absent in models uploaded before it was recorded")
    parameters: int
    size_bytes: int
    exported_methods: list[str]
    calibration_samples: int | None = Field(
        None, description="samples in the calibration batch; a failure on a larger request does not count against the model's health "
        "(absent in models uploaded before it was recorded)"
    )
    format: ModelFormat = Field(
        "torchscript",
        description="torchscript, or exported: a .pt2 program, which serves as the original while the passes work on "
        "TorchScript traced from it",
    )


class UnlabeledSummary(BaseModel):
    """How the upload's unlabeled set was used."""

    given: int = Field(description="samples in the unlabeled file")
    used: int = Field(description="samples used (at most the config's max_unlabeled_samples)")
    fitting: int = Field(description="fed distillation, reconstruction and sensitivity (never quantizer calibration)")
    held_out: int = Field(description="held out with the calibration's held-out samples, to certify fidelity")


class CalibrationSummary(BaseModel):
    samples: int
    train_samples: int
    held_out_samples: int = Field(description="samples fidelity is judged on, unlabeled ones included")
    labels: bool
    unlabeled: UnlabeledSummary | None = Field(None, description="absent when no unlabeled set was uploaded")


class Chosen(BaseModel):
    candidate: str = Field(description="candidate name, or 'original' when nothing qualified")
    reason: str
    speedup: float | None = None
    fidelity: Fidelity | None = None
    runtime: Runtime = "torchscript"
    certified: bool | None = Field(None, description="whether the served candidate's fidelity is certified (absent for the original)")


class SearchSummary(BaseModel):
    strategy: Literal["grid", "random"]
    objective: Literal["latency", "size"]
    space_size: int = Field(description="valid plans in the space")
    trials_run: int
    trials_skipped: int
    folds: int
    time_budget_s: float
    budget_source: str = Field(description="'config', or how the automatic budget was derived")
    elapsed_s: float
    stopped_because: str
    pareto: list[str] = Field(
        description="trial names on the speed-up / fidelity Pareto front, from the final (re-timed) figures since "
        "version 2; version 1 used each trial's first timing"
    )
    fallback_note: str | None = None
    first_note: str | None = Field(None, description="first plans of the default search left out on this model, and why")
    compound_note: str | None = Field(None, description="whether compound plans (pruning → distillation → int8) were tried, and why")


# 1: before model_name and class_name; 2: before timed_alone (finalists timed in-process); 3: before
# per-output judgements, bounds and verdicts (every [N, C] output judged by agreement). Older ones read with those absent.
REPORT_VERSION = 4


class Report(BaseModel):
    version: int = Field(1, description="report schema version; files without one are version 1")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    torch_version: str
    threads: int
    batch_size: int
    tolerance: dict[str, Any]
    min_speedup: float
    model_name: str | None = Field(None, description="the name the model was uploaded under, when given")
    model: ModelSummary
    calibration: CalibrationSummary
    baseline_accuracy: float | None = None
    outputs: list[OutputJudgement] = Field(default_factory=list, description="how each output was judged and why; empty before version 4")
    candidates: list[CandidateReport]
    search: SearchSummary | None = None
    chosen: Chosen
    seconds: float
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="wall time per stage (loading, measuring the original, trials, ...), in order"
    )

    def candidate(self, name: str) -> CandidateReport:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(name)
