"""report.html: one self-contained page (inline SVG and CSS, no scripts, no network): who the model
is, what is served and why, a plot of every trial, and the full table; the figures of the text table (wire.report_text)."""

from __future__ import annotations

import html

from wire.contract.report import Report
from wire.report_text.text import (
    baseline_text,
    chosen_text,
    fidelity_text,
    folds_text,
    front_text,
    judgements_text,
    lower_bound_text,
    model_text,
    ms_text,
    ratio_text,
    samples_text,
    size_text,
    speedup_text,
    tolerance_text,
)
from wire.report_text.view import ReportView, TrialRow, view_report

from .plot import plotted_rows, render_plot

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #111; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.subtitle, .note { color: #444; }
table { border-collapse: collapse; margin-top: 12px; }
table#trials { font-size: 13px; width: 100%; }
td.notes { min-width: 9em; color: #333; font-size: 12px; }
td.trial-name { min-width: 11em; max-width: 15em; overflow-wrap: break-word; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
table.facts th { width: 9em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.chosen td { background: #e3f3e7; font-weight: 600; }
tr.status-failed td, tr.status-skipped td { color: #777; }
td.front-marker { color: #1a5fd6; font-weight: 700; white-space: nowrap; }
.warning { border-left: 4px solid #c77700; background: #fff6e5; padding: 6px 10px; }
figure { margin: 16px 0; }
@media print { body { margin: 0; } tr.chosen td { background: none; } }
"""


def render_html(report: Report) -> str:
    view = view_report(report)
    name = html.escape(view.baseline.name)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>optiserve report: {name}</title>
<style>{STYLE}</style></head><body>
<h1>Optimization report: <span id="model-name">{name}</span></h1>
<p class="subtitle">{html.escape(_subtitle(view))}</p>
{_facts(view)}
{_warning(view)}
<figure>{render_plot(view)}
<figcaption class="note">{html.escape(_caption(view))}</figcaption></figure>
{_table(view)}
<p class="note">★ front: on the Pareto front of speed-up at batch {report.batch_size} and {html.escape(view.tolerance.metric)},
from the final figures (finalists are timed again, each alone in fresh processes, taking turns with the original). {html.escape(view.timing_note)}</p>
</body></html>
"""


def _subtitle(view: ReportView) -> str:
    report = view.report
    return (
        f"{model_text(view)}; report version {report.version}, created {report.created_at}; "
        f"torch {report.torch_version}, {report.threads} thread(s)"
    )


def _facts(view: ReportView) -> str:
    report = view.report
    chosen = view.chosen
    served = (
        f'<span id="chosen-name" data-trial="{html.escape(chosen.name)}">#{chosen.index} {html.escape(chosen.name)}</span> '
        f"({chosen.candidate.runtime}): {html.escape(chosen_text(view))}"
        if chosen
        else '<span id="chosen-name" data-trial="original">the original</span>'
    )
    facts = [
        ("Original", f'<span id="baseline">{html.escape(baseline_text(view))}</span>'),
        ("Served", served),
        ("Why", html.escape(report.chosen.reason)),
        (
            "Rule",
            html.escape(
                f"{tolerance_text(view)} on {samples_text(view)}, and at least "
                f"{report.min_speedup:.2f}x faster at batch {report.batch_size}"
            ),
        ),
        *([("Outputs judged", f'<span id="judgements">{html.escape(judgements_text(report))}</span>')] if report.outputs else []),
        ("Time", f'<span id="time">{html.escape(view.time_text)}</span>'),
        ("Pareto front", html.escape(front_text(view))),
    ]
    rows = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in facts)
    return f'<table class="facts" id="summary">{rows}</table>'


def _warning(view: ReportView) -> str:
    if view.confidence_warning is None:
        return ""
    return f'<p class="warning" id="confidence-warning">Warning: {html.escape(view.confidence_warning)}.</p>'


def _caption(view: ReportView) -> str:
    plotted = {row.name for row in plotted_rows(view)}
    missing = [row for row in view.rows if row.name not in plotted]
    caption = (
        f"One point per measured trial, labelled with its # in the table below; the shaded area qualifies "
        f"({tolerance_text(view)}, at least {view.report.min_speedup:.2f}x)."
    )
    if missing:
        caption += " Not plotted (no speed-up or no finite metric): " + ", ".join(f"#{row.index} ({row.candidate.status})" for row in missing) + "."
    return caption


def _header(view: ReportView) -> str:
    sizes = view.batch_sizes
    cells = [
        "#", "trial", "runtime", "status", "fidelity",
        *(["folds mean ± std (n)"] if view.folds > 1 else []),
        *(["agreement 95% low"] if view.tolerance.metric == "agreement" else []),
        *(f"x @{size}" for size in sizes), *(f"ms @{size}*" for size in sizes),
        "size", "size ratio", "in tol.", "front", "s", "notes",
    ]  # fmt: skip
    return "<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in cells) + "</tr>"


def _baseline_row(view: ReportView) -> str:
    baseline = view.baseline
    cells = [
        _num("0"), "original", "torchscript", "baseline",
        f"acc {baseline.accuracy:.3f}" if baseline.accuracy is not None else "reference",
        *(["-"] if view.folds > 1 else []),
        *(["-"] if view.tolerance.metric == "agreement" else []),
        *(_num("1.00x") for _ in view.batch_sizes), *(_num(ms_text(baseline.ms[size])) for size in view.batch_sizes),
        _num(size_text(baseline.size_bytes)), _num("1.00x"), "-", "", "", '<td class="notes">the reference every trial is compared with</td>',
    ]  # fmt: skip
    css = "baseline chosen" if view.chosen is None else "baseline"
    return f'<tr id="baseline-row" class="{css}" data-trial="original">' + "".join(_cell(cell) for cell in cells) + "</tr>"


def _row(row: TrialRow, view: ReportView) -> str:
    candidate = row.candidate
    notes = candidate.error if candidate.status != "ok" else "; ".join(candidate.notes)
    cells = [
        _num(str(row.index)), f'<td class="trial-name">{html.escape(candidate.name)}</td>', candidate.runtime, candidate.status,
        html.escape(fidelity_text(candidate)),
        *([_num(folds_text(candidate))] if view.folds > 1 else []),
        *([_num(html.escape(lower_bound_text(row)))] if view.tolerance.metric == "agreement" else []),
        *(_num(speedup_text(row.speedups[size])) for size in view.batch_sizes),
        *(_num(ms_text(row.ms[size])) for size in view.batch_sizes),
        _num(size_text(candidate.size_bytes)), _num(ratio_text(row.size_ratio)),
        "yes" if candidate.meets_tolerance else "no",
        '<td class="front-marker">★ front</td>' if row.on_front else "",
        _num(f"{candidate.seconds:.1f}"), f'<td class="notes">{html.escape((notes or "")[:400])}</td>',
    ]  # fmt: skip
    css = " ".join(["trial", f"status-{candidate.status}", *(["chosen"] if row.chosen else []), *(["front"] if row.on_front else [])])
    attributes = (
        f'class="{css}" data-trial="{html.escape(candidate.name)}" data-index="{row.index}" '
        f'data-status="{candidate.status}" data-front="{str(row.on_front).lower()}" data-chosen="{str(row.chosen).lower()}"'
    )
    return f"<tr {attributes}>" + "".join(_cell(cell) for cell in cells) + "</tr>"


def _num(text: str) -> str:
    return f'<td class="num">{text}</td>'


def _cell(content: str) -> str:
    return content if content.startswith("<td") else f"<td>{content}</td>"


def _table(view: ReportView) -> str:
    rows = "".join(_row(row, view) for row in view.rows)
    return (
        f'<table id="trials">{_header(view)}{_baseline_row(view)}{rows}</table>'
        f'<p class="note">x @b: speed-up at batch b. * ms @b: the original\'s median over all rounds ÷ the trial\'s speed-up (see below). '
        f"s: seconds the trial took.</p>"
    )
