"""A plain-text table of the report's candidates, for terminals and logs."""

from __future__ import annotations

from .report import CandidateReport, Report


def format_report(report: Report) -> str:
    header = ["candidate", "runtime", "status", "fidelity", "ms@1", f"ms@{report.batch_size}", "speed-up", "size", "ok", "chosen"]
    rows = [["original", "torchscript", "baseline", _baseline_fidelity(report), *_baseline_latency(report), "1.00x",
             _size(report.model.size_bytes), "", "*" if report.chosen.candidate == "original" else ""]]
    rows += [_row(candidate, report) for candidate in report.candidates if candidate.status != "skipped"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    tolerance = f"{report.tolerance['metric']} {'≤' if report.tolerance['metric'] == 'accuracy_drop' else '≥'} {report.tolerance['threshold']}"
    lines += ["", f"tolerance: {tolerance}; needs ≥ {report.min_speedup:.2f}x at batch {report.batch_size}; "
              f"{report.threads} thread(s); held-out samples: {report.calibration.held_out_samples}",
              f"chosen: {report.chosen.candidate} — {report.chosen.reason}"]
    if report.search:
        search = report.search
        lines.insert(-1, f"search: {search.strategy}, {search.trials_run} trials run, {search.trials_skipped} skipped, "
                         f"{search.folds} fold(s), {search.elapsed_s:.0f} s of {search.time_budget_s:.0f} s; stopped: {search.stopped_because}; "
                         f"Pareto front: {', '.join(search.pareto) or '-'}")
    for candidate in report.candidates:
        if candidate.status == "failed":
            lines.append(f"failed: {candidate.name} at {candidate.failed_pass or 'measurement'}: {(candidate.error or '').splitlines()[0]}")
    return "\n".join(lines)


def _row(candidate: CandidateReport, report: Report) -> list[str]:
    latency = {comparison.batch_size: comparison.candidate.median_ms for comparison in candidate.latency}
    return [
        candidate.name,
        candidate.runtime,
        candidate.status,
        candidate_fidelity_text(candidate),
        _ms(latency.get(1)),
        _ms(latency.get(report.batch_size)),
        f"{candidate.speedup:.2f}x" if candidate.speedup else "-",
        _size(candidate.size_bytes),
        "yes" if candidate.meets_tolerance else "no",
        "*" if report.chosen.candidate == candidate.name else "",
    ]


def candidate_fidelity_text(candidate: CandidateReport) -> str:
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


def _baseline_fidelity(report: Report) -> str:
    return f"acc {report.baseline_accuracy:.3f}" if report.baseline_accuracy is not None else "reference"


def _baseline_latency(report: Report) -> list[str]:
    measured = [c for c in report.candidates if c.latency]
    if not measured:
        return ["-", "-"]
    latency = {comparison.batch_size: comparison.original.median_ms for comparison in measured[0].latency}
    return [_ms(latency.get(1)), _ms(latency.get(report.batch_size))]


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
