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

from wire.contract.pareto import pareto_front
from wire.contract.report import REPORT_VERSION, CalibrationSummary, ModelFormat, ModelSummary, Report, UnlabeledSummary

from . import jit
from .measure import watch
from .measure.allocator import pin_malloc_thresholds
from .intake.calibration import Batch, load_calibration, load_labels, load_unlabeled
from .candidates import BuiltCandidate, PlanBuilder, Reference, confirm_finalists, evaluate_candidate
from .choice import choose
from .config import PipelineConfig
from .errors import InvalidConfigError
from .fidelity.measures import accuracy
from .intake.model_loading import check_model_accepts, load_upload
from .passes import Plan
from .fidelity.references import make_references
from .search.first_plans import first_plans_for
from .search.runner import run_search
from .exported import is_exported_archive
from .search.settings import SearchConfig
from .stages import StageClock
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


def inspect_upload(
    model: Source, calibration: Source, labels: Source | None = None, config: Any = None, unlabeled: Source | None = None
) -> ModelSummary:
    """Everything an upload needs to pass before it is accepted; fast (runs two samples; the unlabeled
    set's layout is only compared with the calibration batch's)."""
    settings = parse_config(config)
    module, _, batch, _ = _load_inputs(model, calibration, labels)
    if unlabeled is not None:
        load_unlabeled(unlabeled, jit.forward_argument_names(module), batch)
    summary = _summarize(module, batch, _size(model), source_format(_read(model)))
    _check_class_outputs(settings, summary.outputs)
    return summary


def optimize(
    model: Source,
    calibration: Source,
    config: PipelineConfig | dict[str, Any] | str | None = None,
    labels: Source | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
    unlabeled: Source | None = None,
) -> OptimizationResult:
    """`name` is what the report calls the model (the upload's name); the report falls back to its class.

    `unlabeled`: more inputs in the calibration batch's layout, without labels. They feed the passes
    that fit weights (distillation, reconstruction, sensitivity) and certify fidelity on more
    held-out samples; the calibration batch alone still calibrates the quantizers."""
    started = time.perf_counter()
    pin_malloc_thresholds()
    clock = StageClock(progress or (lambda stage, fraction: None))
    notify = clock.notify
    settings = parse_config(config)
    notify("loading", 0.0)
    with watch.step("loading it and running two calibration samples", watch.step_seconds(settings.candidate_timeout, None)):
        original, program, batch, two_samples_seconds = _load_inputs(model, calibration, labels)
    extra, offered = _load_unlabeled(unlabeled, original, batch, settings)
    _check_class_outputs(settings, [name for name, _ in check_model_accepts(original, batch.head(2))])
    original_bytes = _read(model)
    original_runtime = source_format(original_bytes)
    threads = settings.threads or torch.get_num_threads()
    with _torch_threads(threads):
        notify("measuring the original", 0.02)
        search, first_note = _default_first_plans(settings, original)
        references = _measure_original(original, program, batch, settings, threads, search.folds if search else 1, two_samples_seconds, extra)
        if search is None:
            built, summary = _measure_candidates(references[0], settings, notify), None
        else:
            spares = _spare_folds(original, program, batch, settings, threads, search, two_samples_seconds, extra)
            outcome = run_search(references, settings, search, notify, started, spare_folds=spares)
            built, summary = outcome.built, outcome.summary
        notify("timing the finalists alone", 0.96)
        confirm_finalists(built, references[0], settings)
    reference = references[0]
    notify("choosing", 0.97)
    clock.stop()
    candidates = [b.report for b in built]
    if summary is not None:
        summary.pareto = pareto_front(candidates, reference.tolerance)  # re-timing may have moved trials off it
        summary.first_note = first_note
    chosen = choose(candidates, settings, search.objective if search else "latency")
    report = Report(
        version=REPORT_VERSION,
        torch_version=torch.__version__,
        threads=threads,
        batch_size=reference.timing_batches[-1].inputs[0].shape[0],
        tolerance=reference.tolerance.model_dump(),
        min_speedup=settings.min_speedup,
        model_name=name,
        model=_summarize(original, batch, len(original_bytes), original_runtime),
        calibration=CalibrationSummary(
            samples=len(batch),
            train_samples=len(reference.train),
            held_out_samples=len(reference.held_out),
            labels=batch.labels is not None,
            unlabeled=_unlabeled_summary(reference, offered),
        ),
        baseline_accuracy=_baseline_accuracy(reference),
        outputs=list(reference.judgements),
        candidates=candidates,
        search=summary,
        chosen=chosen,
        seconds=round(time.perf_counter() - started, 3),
        stage_seconds=clock.seconds(),
    )
    winner = next((b for b in built if b.report.name == chosen.candidate and b.archive is not None), None)
    optimized = Variant("optimized", winner.report.runtime, winner.archive) if winner else None
    notify("done", 1.0)
    built_variants = {b.report.name: Variant(b.report.name, b.report.runtime, b.archive) for b in built if b.archive}
    return OptimizationResult(Variant("original", original_runtime, original_bytes), optimized, report, built_variants)


def _measure_original(
    original: jit.ScriptModule,
    program: torch.export.ExportedProgram | None,
    batch: Batch,
    settings: PipelineConfig,
    threads: int,
    folds: int,
    two_samples_seconds: float,
    unlabeled: Batch | None = None,
) -> list[Reference]:
    """The references, each with a .pt2 upload's program (or None) and the deadline of a candidate's
    steps: max(60 s, 20x the original's forward over the calibration set), unless the config sets
    `candidate_timeout`."""
    # Before it is measured, the forward is guessed from the first call on two samples (an overestimate:
    # a first call pays for TorchScript's profiling run).
    guess = two_samples_seconds * max(len(batch) / 2, 1) * folds
    with watch.step("running it over the calibration set", watch.step_seconds(settings.candidate_timeout, guess)):
        started = time.perf_counter()
        references = make_references(original, batch, settings, threads, folds, unlabeled=unlabeled)
        forward_seconds = (time.perf_counter() - started) / folds
    seconds = watch.step_seconds(settings.candidate_timeout, forward_seconds)
    return [replace(reference, step_seconds=seconds, program=program) for reference in references]


def _spare_folds(
    original: jit.ScriptModule,
    program: torch.export.ExportedProgram | None,
    batch: Batch,
    settings: PipelineConfig,
    threads: int,
    search: SearchConfig,
    two_samples_seconds: float,
    unlabeled: Batch | None,
) -> Callable[[], list[Reference]] | None:
    """The references a near miss is re-judged on, made when first needed; None where there is no
    second look: folds already, an unlabeled set (its held-out part is the larger sample), or too few samples."""
    folds = search.near_miss_folds
    if folds < 2 or search.folds > 1 or unlabeled is not None or len(batch) < 2 * folds:
        return None

    return lambda: _measure_original(original, program, batch, settings, threads, folds, two_samples_seconds)


def _load_inputs(model: Source, calibration: Source, labels: Source | None) -> tuple[jit.ScriptModule, torch.export.ExportedProgram | None, Batch, float]:
    """The model, a .pt2 upload's program (or None), the calibration batch, and the seconds the model
    took on its first two samples."""
    module, program = load_upload(model)
    batch = load_calibration(calibration, jit.forward_argument_names(module))
    if labels is not None:
        batch = replace(batch, labels=load_labels(labels, len(batch)))
    started = time.perf_counter()
    check_model_accepts(module, batch)
    return module, program, batch, time.perf_counter() - started


def _default_first_plans(settings: PipelineConfig, original: jit.ScriptModule) -> tuple[SearchConfig | None, str | None]:
    """The search to run; the default one leaves out first plans that cannot pay on this model."""
    search = settings.search_config()
    if search is None or settings.search is not None or not search.first:
        return search, None
    first, note = first_plans_for(search.first, original)
    return search.model_copy(update={"first": first}), note


def _load_unlabeled(source: Source | None, original: jit.ScriptModule, batch: Batch, settings: PipelineConfig) -> tuple[Batch | None, int]:
    """(the unlabeled samples the run uses, how many were given). Past `max_unlabeled_samples` the
    rest are left out: each one held out costs a forward per candidate."""
    if source is None:
        return None, 0
    given = load_unlabeled(source, jit.forward_argument_names(original), batch)
    used = given.take(torch.arange(min(len(given), settings.max_unlabeled_samples)))  # a copy: the file's map is let go
    return used, len(given)


def _unlabeled_summary(reference: Reference, offered: int) -> UnlabeledSummary | None:
    if offered == 0:
        return None
    fitting = reference.train.unlabeled
    return UnlabeledSummary(
        given=offered,
        used=reference.unlabeled_held_out + (len(fitting) if fitting is not None else 0),
        fitting=len(fitting) if fitting is not None else 0,
        held_out=reference.unlabeled_held_out,
    )


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


def source_format(data: bytes) -> ModelFormat:
    """What an upload is, by content: a torch.export program or TorchScript."""
    return "exported" if is_exported_archive(data) else "torchscript"


def _summarize(module: jit.ScriptModule, batch: Batch, size_bytes: int, model_format: ModelFormat) -> ModelSummary:
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
        format=model_format,
        calibration_samples=len(batch),
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
