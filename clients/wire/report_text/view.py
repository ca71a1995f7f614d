"""The figures a report shows, derived once, so that the terminal table and the HTML page agree.

Both renderers read a ReportView; neither recomputes a front, a speed-up or a timing of its own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..contract.confidence import agreement_bound, resolution_warning
from ..contract.pareto import pareto_front
from ..contract.report import CandidateReport, Report
from ..contract.tolerance import Tolerance


@dataclass(frozen=True)
class Baseline:
    """The original model: what every trial is compared with."""

    name: str
    class_name: str | None
    accuracy: float | None
    size_bytes: int
    ms: dict[int, float | None]  # by batch size: the original's median over all timing rounds
    ms_range: dict[int, tuple[float, float]]  # by batch size: lowest and highest of those per-round medians
    rounds: int


@dataclass(frozen=True)
class TrialRow:
    index: int  # 1-based position in the report; the plot labels points with it
    candidate: CandidateReport
    metric: float | None  # the tolerance metric the verdict used: the fold mean under cross-validation
    samples: int  # held-out samples behind `metric`
    lower_bound: float | None  # one-sided 95% Wilson lower bound of `metric` (the verdicts' bound), for agreement only
    speedups: dict[int, float | None]  # by batch size, final (re-timed) figures
    ms: dict[int, float | None]  # by batch size: baseline ms / speed-up, comparable across rows
    size_ratio: float | None  # candidate size / original size
    on_front: bool
    chosen: bool

    @property
    def name(self) -> str:
        return self.candidate.name


@dataclass(frozen=True)
class ReportView:
    report: Report
    tolerance: Tolerance
    batch_sizes: list[int]  # 1 and the served batch
    baseline: Baseline
    rows: list[TrialRow]
    front: list[str]  # trial names on the Pareto front of the final figures, fastest first
    time_text: str
    timing_note: str
    confidence_warning: str | None

    @property
    def chosen(self) -> TrialRow | None:
        return next((row for row in self.rows if row.chosen), None)

    @property
    def folds(self) -> int:
        return self.report.search.folds if self.report.search else 1


def view_report(report: Report) -> ReportView:
    # Fields a newer server added to the tolerance do not change how this one reads.
    tolerance = Tolerance.model_validate(report.tolerance, extra="ignore")
    batch_sizes = sorted({1, report.batch_size})
    baseline = _baseline(report, batch_sizes)
    front = pareto_front(report.candidates, tolerance)
    folds = report.search.folds if report.search else 1
    rows = [
        _row(index, candidate, report, tolerance, baseline, batch_sizes, candidate.name in front, folds)
        for index, candidate in enumerate(report.candidates, start=1)
    ]
    return ReportView(
        report=report,
        tolerance=tolerance,
        batch_sizes=batch_sizes,
        baseline=baseline,
        rows=rows,
        front=front,
        time_text=_time_text(report),
        timing_note=_timing_note(baseline, report.batch_size),
        confidence_warning=resolution_warning(tolerance.metric, tolerance.threshold, _samples_behind_verdicts(report, folds)),
    )


def tolerance_metric(candidate: CandidateReport, tolerance: Tolerance) -> float | None:
    """The figure the verdict was made on: the mean over folds under cross-validation, else the one split's."""
    if candidate.fidelity_mean is not None:
        return candidate.fidelity_mean
    return tolerance.value(candidate.fidelity) if candidate.fidelity else None


def _baseline(report: Report, batch_sizes: list[int]) -> Baseline:
    per_round = {size: [c.original.median_ms for t in report.candidates for c in t.latency if c.batch_size == size] for size in batch_sizes}
    return Baseline(
        name=report.model_name or report.model.class_name or "unnamed model",
        class_name=report.model.class_name,
        accuracy=report.baseline_accuracy,
        size_bytes=report.model.size_bytes,
        # The median over rounds: the first round in a process runs while TorchScript still optimizes.
        ms={size: statistics.median(times) if times else None for size, times in per_round.items()},
        ms_range={size: (min(times), max(times)) for size, times in per_round.items() if times},
        rounds=len(per_round[report.batch_size]),
    )


def _row(
    index: int,
    candidate: CandidateReport,
    report: Report,
    tolerance: Tolerance,
    baseline: Baseline,
    batch_sizes: list[int],
    on_front: bool,
    folds: int,
) -> TrialRow:
    speedups = {size: next((c.speedup for c in candidate.latency if c.batch_size == size), None) for size in batch_sizes}
    metric = tolerance_metric(candidate, tolerance)
    samples = _samples_judged(candidate, report, folds)
    return TrialRow(
        index=index,
        candidate=candidate,
        metric=metric,
        samples=samples,
        lower_bound=agreement_bound(metric, samples) if metric is not None and tolerance.metric == "agreement" else None,
        speedups=speedups,
        ms={size: _comparable_ms(baseline.ms[size], speedups[size]) for size in batch_sizes},
        size_ratio=candidate.size_bytes / report.model.size_bytes if candidate.size_bytes else None,
        on_front=on_front,
        chosen=candidate.name == report.chosen.candidate,
    )


def _samples_judged(candidate: CandidateReport, report: Report, folds: int) -> int:
    """Held-out samples behind the verdict: one split's, or under k-fold the folds that ran (each sample is held out once)."""
    if folds == 1 or len(candidate.fidelity_folds) <= 1:
        return candidate.fidelity.samples if candidate.fidelity else report.calibration.held_out_samples
    # torch.tensor_split gives the first (n mod k) folds one sample more.
    per_fold, extra = divmod(report.calibration.samples, folds)
    return sum(per_fold + (fold < extra) for fold in range(len(candidate.fidelity_folds)))


def _samples_behind_verdicts(report: Report, folds: int) -> int:
    return report.calibration.samples if folds > 1 else report.calibration.held_out_samples


def _comparable_ms(baseline_ms: float | None, speedup: float | None) -> float | None:
    return baseline_ms / speedup if baseline_ms is not None and speedup else None


def _time_text(report: Report) -> str:
    search = report.search
    stages = "; by stage: " + ", ".join(f"{stage} {spent:.1f} s" for stage, spent in report.stage_seconds.items()) if report.stage_seconds else ""
    if search is None:
        return f"{report.seconds:.1f} s in all; fixed candidates, no time budget{stages}"
    compound = "".join(f"; {note}" for note in (search.first_note, search.compound_note) if note)
    return (
        f"{report.seconds:.1f} s in all, against a time budget of {search.time_budget_s:.1f} s ({search.budget_source}); "
        f"the trials ended at {search.elapsed_s:.1f} s and the rest timed the finalists alone; "
        f"search stopped: {search.stopped_because}{stages}{compound}"
    )


def _timing_note(baseline: Baseline, batch_size: int) -> str:
    spread = baseline.ms_range.get(batch_size)
    drift = (
        f"the original itself measured {spread[0]:.3g}-{spread[1]:.3g} ms at batch {batch_size} across the {baseline.rounds} rounds (one per timed trial)"
        if spread
        else "no trial was timed"
    )
    return (
        "Each trial was timed in its own round, taking turns call by call with the original; "
        f"{drift}, so raw milliseconds from different rounds cannot be compared. "
        "The speed-ups are within-round ratios; the ms columns are the original's median over all rounds "
        "divided by each trial's speed-up, so they do compare across rows."
    )


__all__ = ["view_report", "ReportView", "TrialRow", "Baseline", "tolerance_metric"]
