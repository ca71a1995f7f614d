"""Building a candidate from a plan and measuring it against the original.

Plans that share a prefix (e.g. the same pruning + fine-tuning under several quantizations) build
that prefix once: PlanBuilder keeps each prefix's result and hands out private copies.
"""

from __future__ import annotations

import copy
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from wire.contract.report import AloneTiming, CandidateReport, LatencyComparison, OutputJudgement

from . import jit
from .measure import watch
from .intake.calibration import Batch
from .config import PipelineConfig, Tolerance
from .fidelity.measures import assess, compare_outputs
from .measure.latency import MIN_ROUNDS, alone_stats, compare_latency
from .measure.latency_alone import STALL_FACTOR, Subject, time_alone, undisturbed
from .intake.model_loading import run_model
from .fidelity.outputs import NamedOutputs
from .passes import Plan, registered, run_pass
from .runtimes import LoadedVariant, load_variant, runtime_of, runtime_serving

FINALISTS = 4  # at most: the fastest of each of the three runtimes and a close runner-up
CLOSE_CALL = 1.15  # a runner-up within this factor of the fastest could swap places with it
ALONE_TIMEOUT_S = 60.0  # a timing process gets this, plus ten times its calls' expected time


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
    step_seconds: float = watch.STEP_FLOOR_S  # the deadline of each step that runs a candidate (watch.py)
    unlabeled_held_out: int = 0  # of held_out's samples, how many came from the unlabeled set (they have no labels)
    judgements: tuple[OutputJudgement, ...] = ()  # how each output is judged (fidelity.judge_outputs)
    program: Any = None  # a .pt2 upload's torch.export program, for a first step that takes one (takes_program)


class PassFailed(Exception):
    def __init__(self, pass_name: str, cause: Exception) -> None:
        super().__init__(describe_error(cause))
        self.pass_name = pass_name


@dataclass
class PlanBuilder:
    """Applies plans to the original, reusing the result of every prefix already built."""

    reference: Reference
    _prefixes: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    def build(self, plan: Plan) -> tuple[Any, dict[str, Any]]:
        """(model, details by step). Raises PassFailed naming the step that failed."""
        start, model, details = self._longest_cached_prefix(plan)
        for position in range(start, len(plan)):
            step = plan[position]
            if position == 0 and self.reference.program is not None and step.takes_program:
                model = self.reference.program
            try:
                output = run_pass(model, self.reference.train, step)
            except Exception as exc:
                raise PassFailed(step.name, exc) from exc
            model = output.model
            if output.details:
                details[f"{position}:{step.name}"] = output.details
            if position < len(plan) - 1:
                self._prefixes[plan[: position + 1].key] = (_private_copy(model), dict(details))
        return model, details

    def _longest_cached_prefix(self, plan: Plan) -> tuple[int, Any, dict[str, Any]]:
        for length in range(len(plan) - 1, 0, -1):
            cached = self._prefixes.get(plan[:length].key)
            if cached is not None:
                return length, _private_copy(cached[0]), dict(cached[1])
        return 0, jit.reload(self.reference.original), {}


def _private_copy(model: Any) -> Any:
    # deepcopy of a ScriptModule gives non-leaf parameters, which optimizers refuse; a save/load
    # round trip gives proper leaves.
    return jit.reload(model) if isinstance(model, jit.ScriptModule) else copy.deepcopy(model)


@dataclass
class BuiltCandidate:
    report: CandidateReport
    archive: bytes | None = None
    loaded: LoadedVariant | None = None


def new_report(name: str, plan: Plan) -> CandidateReport:
    return CandidateReport(
        name=name,
        plan=[step.spec() for step in plan],
        runtime=runtime_serving(plan.output_format).name,
        status="ok",
        notes=[note for step in plan if (note := registered(step.name).config_class.speed_note)],
    )


def _from_program_note(plan: Plan) -> str:
    """What a candidate of a .pt2 upload was built from (PlanBuilder.build)."""
    if plan and plan[0].takes_program:
        rest = " and the steps after it on its output" if len(plan) > 1 else ""
        return f"{plan[0].name} converted the torch.export program itself{rest}"
    return "built from the TorchScript stand-in traced from the torch.export program (these passes take TorchScript)"


def build_candidate(builder: PlanBuilder, name: str, plan: Plan) -> BuiltCandidate:
    """Build, serialize and reload one plan, and measure its fidelity on the held-out data."""
    started = time.perf_counter()
    report = new_report(name, plan)
    if builder.reference.program is not None:
        report.notes.append(_from_program_note(plan))
    built = BuiltCandidate(report)
    seconds = builder.reference.step_seconds
    try:
        with watch.step("building it", seconds, name):
            model, report.details = builder.build(plan)
            runtime = runtime_of(model)
            report.runtime = runtime.name
            built.archive = runtime.serialize(model)
            report.size_bytes = len(built.archive)
            # Measure the reloaded file, not the in-memory model: the file is what will be served.
            built.loaded = load_variant(runtime.name, built.archive, builder.reference.threads)
        with watch.step("checking its fidelity on the held-out data", seconds, name):
            measure_fidelity(built.loaded, builder.reference, report)
    except Exception as exc:  # a failing candidate is a result, never the end of the pipeline
        fail(built, exc)
    report.seconds = round(time.perf_counter() - started, 3)
    return built


def evaluate_candidate(builder: PlanBuilder, name: str, plan: Plan, config: PipelineConfig) -> BuiltCandidate:
    """Build, measure fidelity, then latency against the original."""
    not_run = not_run_again(name, plan)
    if not_run is not None:
        return not_run
    started = time.perf_counter()
    built = build_candidate(builder, name, plan)
    if built.report.status == "ok":
        measure_latency(built, builder.reference, config)
    built.report.seconds = round(time.perf_counter() - started, 3)
    return built


def not_run_again(name: str, plan: Plan) -> BuiltCandidate | None:
    """The candidate as an earlier run of this job left it (it exceeded its deadline), or None to run it."""
    skip = watch.why_skipped(name)
    if skip is None:
        return None
    built = BuiltCandidate(new_report(name, plan))
    built.report.status, built.report.error = skip
    return built


def fail(built: BuiltCandidate, exc: Exception) -> None:
    built.report.status = "failed"
    built.report.failed_pass = exc.pass_name if isinstance(exc, PassFailed) else None
    built.report.error = str(exc) if isinstance(exc, PassFailed) else describe_error(exc)
    built.archive = built.loaded = None


def measure_fidelity(candidate: LoadedVariant, reference: Reference, report: CandidateReport) -> None:
    outputs = run_model(candidate, reference.held_out)
    judgements = list(reference.judgements) or None
    report.fidelity = compare_outputs(reference.held_out_outputs, outputs, reference.held_out.labels, judgements)
    if any(t.is_floating_point() and not torch.isfinite(t).all() for _, t in outputs):
        report.notes.append("the candidate produced NaN or Inf on held-out data")
        verdict, why = "missed", "non-finite outputs"
        report.fidelity.verdict = verdict
    else:
        verdict, why = assess(report.fidelity, reference.tolerance)
    record_verdict(report, verdict, why)


def record_verdict(report: CandidateReport, verdict: str, why: str) -> None:
    """meets_tolerance: observed within (it stays in the running); certified: its bound clears the
    tolerance on every output (choice.py prefers these)."""
    report.meets_tolerance = verdict != "missed"
    report.certified = verdict == "met"
    report.notes = [n for n in report.notes if not n.startswith("tolerance")]
    label = {"met": "met (certified)", "undecided": "undecided (within, not certified)", "missed": "missed"}[verdict]
    report.notes.append(f"tolerance {label}: {why}")


def measure_latency(built: BuiltCandidate, reference: Reference, config: PipelineConfig) -> None:
    """Time the candidate against the original at batch 1 and the target batch, taking turns."""
    try:
        for batch in reference.timing_batches:
            # The measurement itself is planned to take up to max_seconds: that comes on top.
            with watch.step(f"timing it at batch {len(batch)}", reference.step_seconds + config.latency.max_seconds, built.report.name):
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
    """Time the finalists each alone in a fresh process, taking turns with the original, and make that
    their speed-up: the figure the choice ranks on and the report and status show.

    In-process figures mislead across runtimes (one runtime's threads slow the next, latency_alone.py),
    so the finalists are the fastest qualifying candidate of each runtime, plus a runner-up close
    enough to swap places with the fastest (the fastest of many noisy measurements is biased towards
    luck). Candidates that are not finalists cannot be chosen over one (choice.py)."""
    finalists = _finalists(built)
    if not finalists:
        return
    batch = reference.timing_batches[-1]
    subjects = [Subject("the original", "torchscript", jit.archive_bytes(reference.original))]
    subjects += [Subject(f.report.name, f.report.runtime, f.archive) for f in finalists]
    slowest_ms = max(comparison.original.median_ms for f in finalists for comparison in f.report.latency[-1:])
    rounds = config.latency.rounds  # as compare_latency: fewer calls for slow models, never under MIN_ROUNDS
    calls = max(min(rounds, MIN_ROUNDS), min(rounds, int(config.latency.max_seconds * 1000 / max(slowest_ms, 1e-3))))
    measured = time_alone(
        subjects,
        batch.inputs,
        reference.threads,
        warmup=config.latency.warmup,
        calls=calls,
        turns=config.latency.processes,
        timeout_s=ALONE_TIMEOUT_S + 10 * (config.latency.warmup + calls) * slowest_ms / 1000,
    )
    original = measured[0]
    for finalist, timings in zip(finalists, measured[1:]):
        if isinstance(original, str) or isinstance(timings, str):
            finalist.report.notes.append(f"finalist, but could not be timed alone: {original if isinstance(original, str) else timings}")
            continue
        _record_alone(finalist.report, len(batch), calls, [t.median_ms for t in original], [t.median_ms for t in timings])


def _finalists(built: list[BuiltCandidate]) -> list[BuiltCandidate]:
    qualifying = [b for b in built if b.report.status == "ok" and b.report.meets_tolerance and b.archive]
    # A certified candidate is chosen over any undecided one (choice.py), so when there are certified
    # ones, the finalists' timing is spent on them.
    certified = [b for b in qualifying if b.report.certified]
    qualifying = certified or qualifying
    qualifying.sort(key=lambda b: b.report.speedup or 0.0, reverse=True)
    if not qualifying:
        return []
    finalists = [next(b for b in qualifying if b.report.runtime == runtime) for runtime in dict.fromkeys(b.report.runtime for b in qualifying)]
    runner_up = qualifying[1] if len(qualifying) > 1 else None
    if runner_up is not None and runner_up not in finalists and (runner_up.report.speedup or 0.0) * CLOSE_CALL >= (qualifying[0].report.speedup or 0.0):
        finalists.append(runner_up)
    return finalists


def _record_alone(report: CandidateReport, batch_size: int, calls: int, original_ms: list[float], candidate_ms: list[float]) -> None:
    """The speed-up is over the undisturbed processes of each (latency_alone.py); all are kept in the report."""
    in_process = report.speedup
    kept_original, kept_candidate = undisturbed(original_ms), undisturbed(candidate_ms)
    speedup = statistics.median(kept_original) / max(statistics.median(kept_candidate), 1e-9)
    report.timed_alone = AloneTiming(
        batch_size=batch_size, processes=len(candidate_ms), calls=calls, original_ms=original_ms,
        candidate_ms=candidate_ms, speedup=speedup, in_process_speedup=in_process,
    )
    # The target batch's comparison becomes the per-process one, so every view of the report shows it.
    report.latency[-1] = LatencyComparison(
        batch_size=batch_size, original=alone_stats(kept_original, calls), candidate=alone_stats(kept_candidate, calls), speedup=speedup
    )
    report.speedup = speedup
    dropped = len(original_ms) - len(kept_original) + len(candidate_ms) - len(kept_candidate)
    stalls = f"; {dropped} stalled process(es) not counted (over {STALL_FACTOR:g}x the fastest of the same variant)" if dropped else ""
    report.notes.append(
        f"finalist: timed alone, {speedup:.2f}x (median over {len(kept_candidate)} fresh processes each, {calls} calls per process; "
        f"in-process {in_process or 0:.2f}x{stalls})"
    )


def describe_error(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # TorchScript errors carry long C++ traces; the first lines say what happened.
    lines = [line for line in text.splitlines() if line.strip()][:6]
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: " + "\n".join(lines)[:1500] + where
