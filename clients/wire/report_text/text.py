"""How report figures are written, shared by the terminal table and the HTML page so they read the same."""

from __future__ import annotations

from ..contract.report import CandidateReport, Report
from .view import ReportView, TrialRow


def speedup_text(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def ms_text(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def size_text(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def ratio_text(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def fidelity_text(candidate: CandidateReport) -> str:
    fidelity = candidate.fidelity
    if fidelity is None:
        return "-"
    parts = []
    if fidelity.agreement is not None:
        parts.append(f"agree {fidelity.agreement:.3f}")
    parts.append(f"cos {fidelity.cosine:.4f}")
    if fidelity.accuracy is not None:
        parts.append(f"acc {fidelity.accuracy:.3f}")
    return " ".join(parts)


def judgements_text(report: Report) -> str:
    """How each output was judged and why (report.outputs; empty before version 4)."""
    return "; ".join(f"{o.name} by {o.judged_by} ({o.kind.replace('_', ' ')}: {o.reason})" for o in report.outputs)


def lower_bound_text(row: TrialRow) -> str:
    return f"≥ {row.lower_bound:.3f} (n={row.samples})" if row.lower_bound is not None else "-"


def folds_text(candidate: CandidateReport) -> str:
    if candidate.fidelity_mean is None or len(candidate.fidelity_folds) <= 1:
        return "-"
    return f"{candidate.fidelity_mean:.4f} ± {candidate.fidelity_std or 0.0:.4f} ({len(candidate.fidelity_folds)})"


def tolerance_text(view: ReportView) -> str:
    tolerance = view.tolerance
    return f"{tolerance.metric} {'≤' if tolerance.lower_is_better else '≥'} {tolerance.threshold:g}"


def model_text(view: ReportView) -> str:
    baseline = view.baseline
    if baseline.class_name and baseline.class_name != baseline.name:
        return f"{baseline.name} (TorchScript class {baseline.class_name})"
    return baseline.name


def samples_text(view: ReportView) -> str:
    """The samples the fidelity verdicts rest on."""
    if view.folds > 1:
        return f"{view.report.calibration.samples} samples, each held out once over {view.folds} folds"
    calibration = view.report.calibration
    if calibration.unlabeled is not None and calibration.unlabeled.held_out:
        own = calibration.held_out_samples - calibration.unlabeled.held_out
        return (
            f"{calibration.held_out_samples} held-out samples ({own} of the {calibration.samples} calibration samples and "
            f"{calibration.unlabeled.held_out} of the unlabeled set; {calibration.unlabeled.fitting} more unlabeled fed distillation)"
        )
    return f"{calibration.held_out_samples} held-out samples (of {calibration.samples})"


def baseline_text(view: ReportView) -> str:
    """The original's figures: accuracy, size, and latency at batch 1 and the served batch."""
    baseline = view.baseline
    parts = [f"accuracy {baseline.accuracy:.3f} on held-out labels"] if baseline.accuracy is not None else []
    parts.append(f"size {size_text(baseline.size_bytes)}")
    parts += [f"{ms_text(baseline.ms[size])} ms at batch {size}" for size in view.batch_sizes]
    return "; ".join(parts)


def chosen_text(view: ReportView) -> str:
    """The served variant's speed-ups and size against the original's; empty when the original is served."""
    row = view.chosen
    if row is None:
        return ""
    speeds = ", ".join(f"{speedup_text(row.speedups[size])} at batch {size}" for size in view.batch_sizes)
    return f"{speeds}; size {size_text(row.candidate.size_bytes)}, {ratio_text(row.size_ratio)} the original's"


def front_text(view: ReportView) -> str:
    by_name = {row.name: row for row in view.rows}
    return ", ".join(f"#{by_name[name].index} {name}" for name in view.front) or "-"
