"""Building one candidate from a plan and measuring it against the original."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import torch

from . import jit
from .calibration import Batch
from .config import CandidateSpec, PipelineConfig, Tolerance
from .fidelity import compare_outputs
from .latency import compare_latency
from .model_loading import run_model
from .outputs import NamedOutputs
from .passes import REGISTRY, run_pass
from .report import CandidateReport
from .runtimes import LoadedVariant, load_variant, runtime_of


@dataclass(frozen=True)
class Reference:
    """Everything a candidate is measured against, computed once per optimization."""

    original: jit.ScriptModule
    train: Batch
    held_out: Batch
    held_out_outputs: NamedOutputs
    timing_batches: tuple[Batch, ...]
    tolerance: Tolerance
    threads: int


@dataclass
class BuiltCandidate:
    report: CandidateReport
    archive: bytes | None = None


def build_and_measure(spec: CandidateSpec, reference: Reference, config: PipelineConfig) -> BuiltCandidate:
    started = time.perf_counter()
    report = CandidateReport(
        name=spec.display_name(),
        plan=[step.spec() for step in spec.plan],
        status="ok",
        notes=[note for step in spec.plan if (note := REGISTRY[step.name].config_class.speed_note)],
    )
    built = BuiltCandidate(report)
    try:
        model = _apply_plan(spec, reference, report)
        runtime = runtime_of(model)
        report.runtime = runtime.name
        built.archive = runtime.serialize(model)
        # Measure the reloaded file, not the in-memory model: the file is what will be served.
        candidate = load_variant(runtime.name, built.archive, reference.threads)
        report.size_bytes = len(built.archive)
        _measure(candidate, reference, config, report)
    except Exception as exc:  # a failing candidate is a result, never the end of the pipeline
        report.status = "failed"
        report.error = _describe(exc)
        built.archive = None
    report.seconds = round(time.perf_counter() - started, 3)
    return built


def _apply_plan(spec: CandidateSpec, reference: Reference, report: CandidateReport) -> jit.ScriptModule:
    model = jit.reload(reference.original)
    for position, step in enumerate(spec.plan):
        report.failed_pass = step.name
        output = run_pass(model, reference.train, step)
        model = output.model
        if output.details:
            report.details[f"{position}:{step.name}"] = output.details
    report.failed_pass = None
    return model


def _measure(candidate: LoadedVariant, reference: Reference, config: PipelineConfig, report: CandidateReport) -> None:
    outputs = run_model(candidate, reference.held_out)
    report.fidelity = compare_outputs(reference.held_out_outputs, outputs, reference.held_out.labels)
    if any(t.is_floating_point() and not torch.isfinite(t).all() for _, t in outputs):
        report.notes.append("the candidate produced NaN or Inf on held-out data")
        met, why = False, "non-finite outputs"
    else:
        met, why = reference.tolerance.met_by(report.fidelity)
    report.meets_tolerance = met
    report.notes.append(f"tolerance {'met' if met else 'missed'}: {why}")
    for batch in reference.timing_batches:
        report.latency.append(
            compare_latency(
                lambda: reference.original(*batch.inputs),
                lambda: candidate(*batch.inputs),
                batch_size=len(batch),
                warmup=config.latency.warmup,
                rounds=config.latency.rounds,
            )
        )
    report.speedup = report.latency[-1].speedup


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # TorchScript errors carry long C++ traces; the first lines say what happened.
    lines = [line for line in text.splitlines() if line.strip()][:6]
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: " + "\n".join(lines)[:1500] + where
