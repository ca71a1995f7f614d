"""Building a candidate from a plan and measuring it against the original.

Plans that share a prefix (e.g. the same pruning + fine-tuning under several quantizations) build
that prefix once: PlanBuilder keeps each prefix's result and hands out private copies.
"""

from __future__ import annotations

import copy
import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from . import jit
from .calibration import Batch
from .config import PipelineConfig, Tolerance
from .fidelity import compare_outputs
from .latency import compare_latency
from .model_loading import run_model
from .outputs import NamedOutputs
from .passes import REGISTRY, PassConfig, run_pass
from .report import CandidateReport
from .runtimes import LoadedVariant, load_variant, runtime_of

FINALISTS = 2  # candidates re-timed before the choice: the fastest and at most one runner-up
CLOSE_CALL = 1.15  # a runner-up within this factor of the fastest could swap places with it


@dataclass(frozen=True)
class Reference:
    """What a candidate is built from and measured against (one per fold)."""

    original: jit.ScriptModule
    train: Batch
    held_out: Batch
    held_out_outputs: NamedOutputs
    timing_batches: tuple[Batch, ...]
    tolerance: Tolerance
    threads: int


class PassFailed(Exception):
    def __init__(self, pass_name: str, cause: Exception) -> None:
        super().__init__(describe_error(cause))
        self.pass_name = pass_name


@dataclass
class PlanBuilder:
    """Applies plans to the original, reusing the result of every prefix already built."""

    reference: Reference
    _prefixes: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    def build(self, plan: list[PassConfig]) -> tuple[Any, dict[str, Any]]:
        """(model, details by step). Raises PassFailed naming the step that failed."""
        start, model, details = self._longest_cached_prefix(plan)
        for position in range(start, len(plan)):
            step = plan[position]
            try:
                output = run_pass(model, self.reference.train, step)
            except Exception as exc:
                raise PassFailed(step.name, exc) from exc
            model = output.model
            if output.details:
                details[f"{position}:{step.name}"] = output.details
            if position < len(plan) - 1:
                self._prefixes[_key(plan[: position + 1])] = (_private_copy(model), dict(details))
        return model, details

    def _longest_cached_prefix(self, plan: list[PassConfig]) -> tuple[int, Any, dict[str, Any]]:
        for length in range(len(plan) - 1, 0, -1):
            cached = self._prefixes.get(_key(plan[:length]))
            if cached is not None:
                return length, _private_copy(cached[0]), dict(cached[1])
        return 0, jit.reload(self.reference.original), {}


def _private_copy(model: Any) -> Any:
    # deepcopy of a ScriptModule gives non-leaf parameters, which optimizers refuse; a save/load
    # round trip gives proper leaves.
    return jit.reload(model) if isinstance(model, jit.ScriptModule) else copy.deepcopy(model)


def _key(plan: list[PassConfig]) -> str:
    return json.dumps([step.spec() for step in plan], sort_keys=True)


@dataclass
class BuiltCandidate:
    report: CandidateReport
    archive: bytes | None = None
    loaded: LoadedVariant | None = None


def new_report(name: str, plan: list[PassConfig]) -> CandidateReport:
    return CandidateReport(
        name=name,
        plan=[step.spec() for step in plan],
        runtime="onnxruntime" if plan and plan[-1].produces == "onnx" else "torchscript",
        status="ok",
        notes=[note for step in plan if (note := REGISTRY[step.name].config_class.speed_note)],
    )


def build_candidate(builder: PlanBuilder, name: str, plan: list[PassConfig]) -> BuiltCandidate:
    """Build, serialize and reload one plan, and measure its fidelity on the held-out data."""
    started = time.perf_counter()
    report = new_report(name, plan)
    built = BuiltCandidate(report)
    try:
        model, report.details = builder.build(plan)
        runtime = runtime_of(model)
        report.runtime = runtime.name
        built.archive = runtime.serialize(model)
        report.size_bytes = len(built.archive)
        # Measure the reloaded file, not the in-memory model: the file is what will be served.
        built.loaded = load_variant(runtime.name, built.archive, builder.reference.threads)
        measure_fidelity(built.loaded, builder.reference, report)
    except Exception as exc:  # a failing candidate is a result, never the end of the pipeline
        fail(built, exc)
    report.seconds = round(time.perf_counter() - started, 3)
    return built


def evaluate_candidate(builder: PlanBuilder, name: str, plan: list[PassConfig], config: PipelineConfig) -> BuiltCandidate:
    """Build, measure fidelity, then latency against the original."""
    started = time.perf_counter()
    built = build_candidate(builder, name, plan)
    if built.report.status == "ok":
        measure_latency(built, builder.reference, config)
    built.report.seconds = round(time.perf_counter() - started, 3)
    return built


def fail(built: BuiltCandidate, exc: Exception) -> None:
    built.report.status = "failed"
    built.report.failed_pass = exc.pass_name if isinstance(exc, PassFailed) else None
    built.report.error = str(exc) if isinstance(exc, PassFailed) else describe_error(exc)
    built.archive = built.loaded = None


def measure_fidelity(candidate: LoadedVariant, reference: Reference, report: CandidateReport) -> None:
    outputs = run_model(candidate, reference.held_out)
    report.fidelity = compare_outputs(reference.held_out_outputs, outputs, reference.held_out.labels)
    if any(t.is_floating_point() and not torch.isfinite(t).all() for _, t in outputs):
        report.notes.append("the candidate produced NaN or Inf on held-out data")
        met, why = False, "non-finite outputs"
    else:
        met, why = reference.tolerance.met_by(report.fidelity)
    report.meets_tolerance = met
    report.notes.append(f"tolerance {'met' if met else 'missed'}: {why}")


def measure_latency(built: BuiltCandidate, reference: Reference, config: PipelineConfig) -> None:
    """Time the candidate against the original at batch 1 and the target batch, taking turns."""
    try:
        for batch in reference.timing_batches:
            built.report.latency.append(
                compare_latency(
                    lambda: reference.original(*batch.inputs),
                    lambda: built.loaded(*batch.inputs),
                    batch_size=len(batch),
                    warmup=config.latency.warmup,
                    rounds=config.latency.rounds,
                    max_seconds=config.latency.max_seconds,
                )
            )
        built.report.speedup = built.report.latency[-1].speedup
    except Exception as exc:
        fail(built, exc)
    # The archive is kept for the result; a loaded copy per trial would only hold memory.
    built.loaded = None


def confirm_finalists(built: list[BuiltCandidate], reference: Reference, config: PipelineConfig) -> None:
    """Re-time the fastest qualifying candidate, and a runner-up close to it, with twice the rounds.

    The fastest of many noisy measurements is biased towards luck (the winner's curse), so the
    winner's number gets a second, longer measurement, and so does any runner-up close enough to
    swap places with it. Runners-up further behind are not re-timed: the order would not change.
    """
    qualifying = [b for b in built if b.report.status == "ok" and b.report.meets_tolerance and b.archive]
    qualifying = sorted(qualifying, key=lambda b: b.report.speedup or 0.0, reverse=True)
    if not qualifying:
        return
    fastest = qualifying[0].report.speedup or 0.0
    finalists = [b for b in qualifying[:FINALISTS] if (b.report.speedup or 0.0) * CLOSE_CALL >= fastest]
    doubled = {"rounds": 2 * config.latency.rounds, "max_seconds": 2 * config.latency.max_seconds}
    longer = config.model_copy(update={"latency": config.latency.model_copy(update=doubled)})
    for finalist in finalists:
        first = finalist.report.speedup or 0.0
        finalist.report.latency = []
        finalist.loaded = load_variant(finalist.report.runtime, finalist.archive, reference.threads)
        measure_latency(finalist, reference, longer)
        if finalist.report.status == "ok":
            finalist.report.notes.append(
                f"finalist: re-timed with {longer.latency.rounds} rounds, {finalist.report.speedup:.2f}x (first run {first:.2f}x)"
            )


def describe_error(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # TorchScript errors carry long C++ traces; the first lines say what happened.
    lines = [line for line in text.splitlines() if line.strip()][:6]
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: " + "\n".join(lines)[:1500] + where
