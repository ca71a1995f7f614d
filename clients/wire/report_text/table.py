"""A plain-text table of the report's candidates, for terminals and logs; the same figures as report.html."""

from __future__ import annotations

from ..contract.report import Report
from .text import (
    judgements_text,
    baseline_text,
    chosen_text,
    fidelity_text,
    folds_text,
    front_text,
    lower_bound_text,
    model_text,
    ms_text,
    ratio_text,
    samples_text,
    size_text,
    speedup_text,
    tolerance_text,
)
from .view import ReportView, TrialRow, view_report


def format_report(report: Report) -> str:
    view = view_report(report)
    sizes = view.batch_sizes
    header = [
        "#", "candidate", "runtime", "status", "fidelity",
        *(["folds mean ± std"] if view.folds > 1 else []),
        *([f"{view.tolerance.metric} 95% low"] if view.tolerance.metric == "agreement" else []),
        *(f"x@{size}" for size in sizes), *(f"ms@{size}" for size in sizes),
        "size", "size ratio", "ok", "front", "chosen",
    ]  # fmt: skip
    rows = [_baseline_row(view), *(_row(row, view) for row in view.rows if row.candidate.status != "skipped")]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += ["", _footer(view)]
    return "\n".join(lines)


def _baseline_row(view: ReportView) -> list[str]:
    baseline = view.baseline
    fidelity = f"acc {baseline.accuracy:.3f}" if baseline.accuracy is not None else "reference"
    return [
        "0", "original", "torchscript", "baseline", fidelity,
        *(["-"] if view.folds > 1 else []),
        *(["-"] if view.tolerance.metric == "agreement" else []),
        *("1.00x" for _ in view.batch_sizes), *(ms_text(baseline.ms[size]) for size in view.batch_sizes),
        size_text(baseline.size_bytes), "1.00x", "", "", "*" if view.chosen is None else "",
    ]  # fmt: skip


def _row(row: TrialRow, view: ReportView) -> list[str]:
    candidate = row.candidate
    return [
        str(row.index), candidate.name, candidate.runtime, candidate.status, fidelity_text(candidate),
        *([folds_text(candidate)] if view.folds > 1 else []),
        *([lower_bound_text(row)] if view.tolerance.metric == "agreement" else []),
        *(speedup_text(row.speedups[size]) for size in view.batch_sizes), *(ms_text(row.ms[size]) for size in view.batch_sizes),
        size_text(candidate.size_bytes), ratio_text(row.size_ratio),
        "yes" if candidate.meets_tolerance else "no", "★" if row.on_front else "", "*" if row.chosen else "",
    ]  # fmt: skip


def _footer(view: ReportView) -> str:
    report = view.report
    skipped = sum(row.candidate.status == "skipped" for row in view.rows)
    chosen = view.chosen
    lines = [
        f"model: {model_text(view)}; {baseline_text(view)}",
        f"tolerance: {tolerance_text(view)} on {samples_text(view)}; needs ≥ "
        f"{report.min_speedup:.2f}x at batch {report.batch_size}; {report.threads} thread(s)",
        *([f"warning: {view.confidence_warning}"] if view.confidence_warning else []),
        *([f"outputs judged: {judgements_text(report)}"] if report.outputs else []),
        f"timing: {view.timing_note}",
        f"time: {view.time_text}",
        f"Pareto front (★, final figures): {front_text(view)}",
        *([f"{skipped} skipped trial(s) not listed; report.html lists them"] if skipped else []),
        f"chosen: #{chosen.index} {chosen.name} — {chosen_text(view)}; {report.chosen.reason}"
        if chosen
        else f"chosen: original — {report.chosen.reason}",
    ]
    for row in view.rows:
        if row.candidate.status == "failed":
            lines.append(f"failed: {row.name} at {row.candidate.failed_pass or 'measurement'}: {(row.candidate.error or '').splitlines()[0]}")
    return "\n".join(lines)
