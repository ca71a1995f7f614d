"""optimize(): load and validate, measure every candidate against the original, choose, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from . import jit
from .allocator import pin_malloc_thresholds
from .calibration import Batch, load_calibration, load_labels
from .candidates import BuiltCandidate, PlanBuilder, Reference, confirm_finalists, evaluate_candidate
from .choice import choose
from .config import PipelineConfig
from .errors import InvalidConfigError
from .fidelity import accuracy
from .model_loading import check_model_accepts, load_model
from .passes import Plan
from .references import make_references
from .search.pareto import pareto_front
from .search.runner import run_search
from .report import REPORT_VERSION, CalibrationSummary, ModelSummary, Report
from .variants import OptimizationResult, Variant

Source = bytes | str | Path
ProgressCallback = Callable[[str, float], None]


def parse_config(config: PipelineConfig | dict[str, Any] | str | None) -> PipelineConfig:
    """Accept a config object, a dict or JSON text; raise InvalidConfigError saying which field is wrong."""
    if isinstance(config, PipelineConfig):
        return config
    try:
        if config is None or config == "":
            return PipelineConfig()
        if isinstance(config, str):
            return PipelineConfig.model_validate_json(config)
        return PipelineConfig.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'config'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidConfigError(f"invalid pipeline config: {problems}") from None


def inspect_upload(model: Source, calibration: Source, labels: Source | None = None, config: Any = None) -> ModelSummary:
    """Everything an upload needs to pass before it is accepted; fast (runs two samples)."""
    settings = parse_config(config)
    module, batch = _load_inputs(model, calibration, labels)
    summary = _summarize(module, batch, _size(model))
    _check_class_outputs(settings, summary.outputs)
    return summary


def optimize(
    model: Source,
    calibration: Source,
    config: PipelineConfig | dict[str, Any] | str | None = None,
    labels: Source | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
) -> OptimizationResult:
    """`name` is what the report calls the model (the upload's name); the report falls back to its class."""
    started = time.perf_counter()
    pin_malloc_thresholds()
    notify = progress or (lambda stage, fraction: None)
    settings = parse_config(config)
    notify("loading", 0.0)
    original, batch = _load_inputs(model, calibration, labels)
    _check_class_outputs(settings, [name for name, _ in check_model_accepts(original, batch.head(2))])
    original_bytes = _read(model)
    threads = settings.threads or torch.get_num_threads()
    with _torch_threads(threads):
        notify("measuring the original", 0.02)
        search = settings.search_config()
        references = make_references(original, batch, settings, threads, search.folds if search else 1)
        if search is None:
            built, summary = _measure_candidates(references[0], settings, notify), None
        else:
            outcome = run_search(references, settings, search, notify, started)
            built, summary = outcome.built, outcome.summary
        notify("timing the finalists alone", 0.96)
        confirm_finalists(built, references[0], settings)
    reference = references[0]
    notify("choosing", 0.97)
    candidates = [b.report for b in built]
    if summary is not None:
        summary.pareto = pareto_front(candidates, reference.tolerance)  # re-timing may have moved trials off it
    chosen = choose(candidates, settings, search.objective if search else "latency")
    report = Report(
        version=REPORT_VERSION,
        torch_version=torch.__version__,
        threads=threads,
        batch_size=reference.timing_batches[-1].inputs[0].shape[0],
        tolerance=reference.tolerance.model_dump(),
        min_speedup=settings.min_speedup,
        model_name=name,
        model=_summarize(original, batch, len(original_bytes)),
        calibration=CalibrationSummary(
            samples=len(batch),
            train_samples=len(reference.train),
            held_out_samples=len(reference.held_out),
            labels=batch.labels is not None,
        ),
        baseline_accuracy=_baseline_accuracy(reference),
        outputs=list(reference.judgements),
        candidates=candidates,
        search=summary,
        chosen=chosen,
        seconds=round(time.perf_counter() - started, 3),
    )
    winner = next((b for b in built if b.report.name == chosen.candidate and b.archive is not None), None)
    optimized = (
        Variant("optimized", winner.report.runtime, winner.archive)
        if winner
        else Variant("optimized", "torchscript", original_bytes)
    )
    notify("done", 1.0)
    built_variants = {b.report.name: Variant(b.report.name, b.report.runtime, b.archive) for b in built if b.archive}
    return OptimizationResult(Variant("original", "torchscript", original_bytes), optimized, report, built_variants)


def _load_inputs(model: Source, calibration: Source, labels: Source | None) -> tuple[jit.ScriptModule, Batch]:
    module = load_model(model)
    batch = load_calibration(calibration, jit.forward_argument_names(module))
    if labels is not None:
        batch = replace(batch, labels=load_labels(labels, len(batch)))
    check_model_accepts(module, batch)
    return module, batch


def _check_class_outputs(settings: PipelineConfig, outputs: list[str]) -> None:
    declared = settings.tolerance.class_outputs if settings.tolerance is not None else None
    unknown = [name for name in declared or [] if name not in outputs]
    if unknown:
        raise InvalidConfigError(f"invalid pipeline config: tolerance.class_outputs names {unknown}, which the model does not return; its outputs are {outputs}")


def _measure_candidates(reference: Reference, settings: PipelineConfig, notify: ProgressCallback) -> list[BuiltCandidate]:
    specs = settings.candidate_specs()
    builder = PlanBuilder(reference)
    built = []
    for position, spec in enumerate(specs):
        notify(f"candidate {position + 1}/{len(specs)}: {spec.display_name()}", 0.05 + 0.9 * position / len(specs))
        built.append(evaluate_candidate(builder, spec.display_name(), Plan(spec.plan), settings))
    return built


def _baseline_accuracy(reference: Reference) -> float | None:
    scores = next((j.name for j in reference.judgements if j.kind == "class_scores"), None)
    if scores is None or reference.held_out.labels is None:
        return None
    return accuracy(dict(reference.held_out_outputs)[scores], reference.held_out.labels)


def _summarize(module: jit.ScriptModule, batch: Batch, size_bytes: int) -> ModelSummary:
    outputs = check_model_accepts(module, batch)
    return ModelSummary(
        class_name=module.original_name,
        inputs=jit.forward_argument_names(module),
        input_shapes=[list(t.shape[1:]) for t in batch.inputs],
        input_dtypes=[str(t.dtype).removeprefix("torch.") for t in batch.inputs],
        outputs=[name for name, _ in outputs],
        output_shapes=[list(t.shape[1:]) for _, t in outputs],
        output_dtypes=[str(t.dtype).removeprefix("torch.") for _, t in outputs],
        parameters=sum(p.numel() for p in module.parameters()),
        size_bytes=size_bytes,
        exported_methods=jit.exported_method_names(module),
    )


@contextmanager
def _torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _read(source: Source) -> bytes:
    return bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()


def _size(source: Source) -> int:
    return len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size


__all__ = ["optimize", "inspect_upload", "parse_config"]
