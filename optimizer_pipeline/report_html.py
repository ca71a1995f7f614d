"""report.html: one self-contained page (inline SVG and CSS, no scripts, no network) with a
scatter plot of every trial, speed-up against fidelity, and the full table."""

from __future__ import annotations

import html
import math

from .config import Tolerance
from .report import CandidateReport, Report
from .report_table import candidate_fidelity_text

WIDTH, HEIGHT, MARGIN = 760, 420, 60


def render_html(report: Report) -> str:
    tolerance = Tolerance.model_validate(report.tolerance)
    pareto = set(report.search.pareto) if report.search else set()
    title = f"optiserve report: {html.escape(report.chosen.candidate)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-top: 16px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
tr.chosen td {{ background: #e6f4ea; font-weight: 600; }}
tr.failed td, tr.skipped td {{ color: #888; }}
.note {{ color: #555; }}
</style></head><body>
<h1>Optimization report</h1>
<p><b>Served:</b> {html.escape(report.chosen.candidate)} ({report.chosen.runtime}) — {html.escape(report.chosen.reason)}</p>
<p class="note">Tolerance: {html.escape(tolerance.explain(tolerance.threshold).split(" (")[0])} must be
{"≤" if tolerance.lower_is_better else "≥"} {tolerance.threshold}; speed-up needed ≥ {report.min_speedup:.2f}x at batch {report.batch_size};
{report.threads} thread(s); {report.calibration.held_out_samples} held-out samples; torch {html.escape(report.torch_version)}.
{_search_line(report)}</p>
{_scatter(report, tolerance, pareto)}
{_table(report, pareto)}
</body></html>
"""


def _search_line(report: Report) -> str:
    search = report.search
    if search is None:
        return ""
    return html.escape(
        f"Search: {search.strategy}, {search.trials_run} trials run, {search.trials_skipped} skipped, "
        f"{search.folds} fold(s), {search.elapsed_s:.0f} s of a {search.time_budget_s:.0f} s budget ({search.budget_source}); "
        f"stopped: {search.stopped_because}."
    )


def _metric(candidate: CandidateReport, tolerance: Tolerance) -> float | None:
    if candidate.fidelity_mean is not None:
        return candidate.fidelity_mean
    return tolerance.value(candidate.fidelity) if candidate.fidelity else None


def _scatter(report: Report, tolerance: Tolerance, pareto: set[str]) -> str:
    points = [(c, c.speedup, _metric(c, tolerance)) for c in report.candidates if c.status == "ok" and c.speedup]
    points = [(c, s, m) for c, s, m in points if m is not None and math.isfinite(m)]
    best = 0.0 if tolerance.lower_is_better else 1.0
    xs = [math.log2(s) for _, s, _ in points] + [0.0]
    ys = [m for _, _, m in points] + [tolerance.threshold, best]
    x_low, x_high = min(xs) - 0.2, max(xs) + 0.2
    y_low, y_high = min(ys), max(ys)
    pad = (y_high - y_low) * 0.08 or 0.01
    y_low, y_high = y_low - pad, y_high + pad

    def sx(speedup: float) -> float:
        return MARGIN + (math.log2(speedup) - x_low) / (x_high - x_low) * (WIDTH - 2 * MARGIN)

    def sy(value: float) -> float:
        return HEIGHT - MARGIN - (value - y_low) / (y_high - y_low) * (HEIGHT - 2 * MARGIN)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="trials">']
    parts.append(f'<rect x="{MARGIN}" y="{MARGIN}" width="{WIDTH - 2 * MARGIN}" height="{HEIGHT - 2 * MARGIN}" fill="#fafafa" stroke="#999"/>')
    for speedup in _ticks(x_low, x_high):
        x = sx(speedup)
        parts.append(f'<line x1="{x:.1f}" y1="{HEIGHT - MARGIN}" x2="{x:.1f}" y2="{HEIGHT - MARGIN + 5}" stroke="#666"/>')
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - MARGIN + 18}" text-anchor="middle" font-size="11">{speedup:g}x</text>')
    for index in range(5):
        value = y_low + (y_high - y_low) * index / 4
        parts.append(f'<text x="{MARGIN - 6}" y="{sy(value) + 4:.1f}" text-anchor="end" font-size="11">{value:.4g}</text>')
    threshold_y = sy(tolerance.threshold)
    parts.append(f'<line x1="{MARGIN}" y1="{threshold_y:.1f}" x2="{WIDTH - MARGIN}" y2="{threshold_y:.1f}" stroke="#c00" stroke-dasharray="6 4"/>')
    parts.append(f'<text x="{WIDTH - MARGIN - 4}" y="{threshold_y - 6:.1f}" text-anchor="end" font-size="11" fill="#c00">budget: {html.escape(tolerance.metric)} {tolerance.threshold}</text>')
    front = sorted(((s, m) for c, s, m in points if c.name in pareto), key=lambda p: p[0])
    if len(front) > 1:
        path = " ".join(f"{sx(s):.1f},{sy(m):.1f}" for s, m in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1a73e8" stroke-width="1.5"/>')
    parts.append(_dot(sx(1.0), sy(best), "#444", 5, "original (1.00x)"))
    for candidate, speedup, metric in points:
        chosen = candidate.name == report.chosen.candidate
        color = "#0a8f3c" if chosen else ("#1a73e8" if candidate.name in pareto else "#aaa")
        parts.append(_dot(sx(speedup), sy(metric), color, 7 if chosen else 5, f"{candidate.name}: {speedup:.2f}x, {metric:.4f}"))
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 14}" text-anchor="middle" font-size="12">speed-up at batch {report.batch_size} (log scale)</text>')
    parts.append(f'<text x="16" y="{HEIGHT / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 16 {HEIGHT / 2})">{html.escape(tolerance.metric)}</text>')
    parts.append(f'<text x="{MARGIN}" y="{MARGIN - 10}" font-size="11">● chosen (green) ● Pareto front (blue) ● other trials (grey) ● original (black)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _dot(x: float, y: float, color: str, radius: int, label: str) -> str:
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{color}"><title>{html.escape(label)}</title></circle>'


def _ticks(low_log2: float, high_log2: float) -> list[float]:
    candidates = [0.125, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32]
    return [t for t in candidates if low_log2 <= math.log2(t) <= high_log2]


def _table(report: Report, pareto: set[str]) -> str:
    header = "<tr><th>trial</th><th>runtime</th><th>status</th><th>fidelity</th><th>folds (mean ± std)</th><th>speed-up</th><th>size</th><th>within budget</th><th>seconds</th><th>notes</th></tr>"
    rows = []
    for c in report.candidates:
        css = "chosen" if c.name == report.chosen.candidate else c.status
        folds = f"{c.fidelity_mean:.4f} ± {c.fidelity_std:.4f}" if c.fidelity_mean is not None and len(c.fidelity_folds) > 1 else ""
        notes = c.error if c.status != "ok" else "; ".join(c.notes)
        rows.append(
            f'<tr class="{css}"><td>{html.escape(c.name)}{" ★" if c.name in pareto else ""}</td><td>{c.runtime}</td><td>{c.status}</td>'
            f"<td>{html.escape(candidate_fidelity_text(c))}</td><td>{folds}</td>"
            f"<td>{f'{c.speedup:.2f}x' if c.speedup else '-'}</td><td>{c.size_bytes or '-'}</td>"
            f"<td>{'yes' if c.meets_tolerance else 'no'}</td><td>{c.seconds:.1f}</td><td>{html.escape((notes or '')[:400])}</td></tr>"
        )
    return f"<table>{header}{''.join(rows)}</table><p class=\"note\">★ = on the Pareto front of speed-up and fidelity.</p>"
