"""Building a plan on several folds of the calibration batch, and judging it on all of them pooled.

Two users: a search configured with K folds builds every trial this way; a search on one hold-out
split does it only for a near miss (`near_miss_folds`): a candidate faster than every one that met
the tolerance, which missed it by less than its held-out samples can resolve. On 64 held-out class
scores one flip is 1.6 points of agreement, so a 99% threshold refuses a candidate for a single
sample; pooled over four folds every calibration sample is held out once, by a variant that never
calibrated or trained on it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from wire.contract.report import CandidateReport
from wire.contract.tolerance import Tolerance

from ..candidates import BuiltCandidate, PlanBuilder, build_candidate, record_verdict
from ..fidelity.measures import assess, could_meet, pool_fidelity
from ..passes.plan import Plan


def build_on_folds(builders: list[PlanBuilder], name: str, plan: Plan, tolerance: Tolerance) -> list[BuiltCandidate]:
    """The plan built and judged fold by fold; stops at a failure, or once the pooled mean is out of reach."""
    per_fold: list[BuiltCandidate] = []
    for builder in builders:
        per_fold.append(build_candidate(builder, name, plan))
        if per_fold[-1].report.status == "failed" or out_of_reach(per_fold, len(builders), tolerance):
            break
    return per_fold


def fold_values(folds: list[CandidateReport], tolerance: Tolerance) -> list[float | None]:
    return [tolerance.value(fold.fidelity) if fold.fidelity else None for fold in folds]


def out_of_reach(done: list[BuiltCandidate], folds: int, tolerance: Tolerance) -> bool:
    """True when the mean over all folds cannot meet the tolerance, however well the rest score."""
    values = fold_values([b.report for b in done], tolerance)
    if tolerance.best_possible is None or len(done) == folds or any(v is None for v in values):
        return False
    samples = sum(b.report.fidelity.samples for b in done) * folds // len(done)
    return not tolerance.accepts_measured((sum(values) + (folds - len(done)) * tolerance.best_possible) / folds, samples)


def summarize_folds(report: CandidateReport, folds: list[CandidateReport], tolerance: Tolerance) -> None:
    values = fold_values(folds, tolerance)
    if any(value is None for value in values):
        return  # met_by already recorded why the metric is unavailable
    report.fidelity_folds = [round(v, 6) for v in values]
    report.fidelity_mean = statistics.fmean(values)
    report.fidelity_std = statistics.pstdev(values) if len(values) > 1 else 0.0
    if len(values) > 1:
        # Every calibration sample is held out once: judge the pooled figures over all of them.
        pooled = pool_fidelity([fold.fidelity for fold in folds])
        verdict, why = assess(pooled, tolerance)
        if not all(f.status == "ok" for f in folds):
            verdict = "missed"
        report.fidelity.verdict, report.fidelity.more_samples = pooled.verdict, pooled.more_samples
        record_verdict(report, verdict, f"pooled over {len(values)} folds ({pooled.samples} samples): {why}, std across folds {report.fidelity_std:.4f}")


def is_near_miss(report: CandidateReport, tolerance: Tolerance, best_met_speedup: float, min_speedup: float) -> bool:
    """Missed on too few samples to tell, and would be the fastest within the tolerance if it were."""
    speedup = report.speedup or 0.0
    return (
        report.status == "ok"
        and not report.meets_tolerance
        and report.fidelity is not None
        and speedup >= min_speedup
        and speedup > best_met_speedup
        and could_meet(report.fidelity, tolerance)
    )


def rejudge_on_folds(main: BuiltCandidate, plan: Plan, spares: Callable[[], list[PlanBuilder]], tolerance: Tolerance) -> None:
    """Build `main`'s plan on every spare fold and let the pooled verdict replace its own. `main`
    (built on the usual split) stays the variant that is timed and served."""
    held_out, builders = main.report.fidelity.samples, spares()
    per_fold = build_on_folds(builders, main.report.name, plan, tolerance)
    failed = next((b.report for b in per_fold if b.report.status == "failed"), None)
    if failed is not None:
        main.report.notes.append(f"near miss not re-judged: building it on another fold failed ({failed.error})")
        return
    summarize_folds(main.report, [b.report for b in per_fold], tolerance)
    main.report.notes.append(
        f"near miss on {held_out} held-out samples, re-judged on {len(per_fold)} folds"
        + ("" if len(per_fold) == len(builders) else f" of {len(builders)} (the rest could not bring it within)")
    )
