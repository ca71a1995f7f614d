"""The report page and table (issue 15, findings 4 and 5): rendered from a real tiny optimization, checked
in headless Chromium, and against hand-built reports that reproduce each finding."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

import tiny_models
from conftest import FAST
from optimizer_pipeline import Report, jit, optimize
from optimizer_pipeline.config import DEFAULT_CANDIDATES, Tolerance
from optimizer_pipeline.report.html import render_html
from optimizer_pipeline.report.plot import linear_ticks, log_ticks
from wire.contract.confidence import agreement_bound, samples_to_show, wilson_lower_bound
from wire.report_text.table import format_report
from wire.report_text.view import tolerance_metric

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
MODEL_NAME = "digits-cnn"
# The built-in single passes and two cheap space trials: enough for a front, a choice and a re-timed finalist.
SEARCH = {
    **FAST,
    "search": {
        "first": DEFAULT_CANDIDATES,
        "max_trials": len(DEFAULT_CANDIDATES) + 2,
        "space": {"prune": [{"pass": "prune_unstructured", "amount": 0.2}], "quantize": [{"pass": "quantize_dynamic"}, {"pass": "quantize_static"}]},
        "sensitive_fallback": False,
    },
}


# --- a minimal DOM from HTML text (the standard library has no DOM) -------------------------------

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def walk(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str | None = None, css: str | None = None, **data: str) -> list[Node]:
        return [
            node
            for node in self.walk()
            if (tag is None or node.tag == tag)
            and (css is None or css in node.attrs.get("class", "").split())
            and all(node.attrs.get(f"data-{key}") == value for key, value in data.items())
        ]

    def by_id(self, element_id: str) -> Node:
        return next(node for node in self.walk() if node.attrs.get("id") == element_id)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {key: value or "" for key, value in attrs})
        self._stack[-1].children.append(node)
        if tag not in VOID:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Node(tag, {key: value or "" for key, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(page)
    return builder.root


# --- a real report --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory) -> tuple[Report, Path]:
    archive, inputs = tiny_models.cnn_bn()
    # Labels the original mostly gets right, so the page has a baseline accuracy to show.
    with torch.no_grad():
        labels = jit.load_archive(archive)(*inputs).argmax(1)
    labels[::7] = (labels[::7] + 1) % 10
    buffer = io.BytesIO()
    torch.save(labels, buffer)
    result = optimize(archive, tiny_models.calibration_bytes(inputs), SEARCH, labels=buffer.getvalue(), name=MODEL_NAME)
    directory = tmp_path_factory.mktemp("report")
    result.save(directory)
    return Report.model_validate_json((directory / "report.json").read_text()), directory / "report.html"


def expected_front(report: Report) -> set[str]:
    """The front by its definition, from the final figures: no other trial at least as fast and as faithful, and better in one."""
    tolerance = Tolerance.model_validate(report.tolerance)
    sign = -1 if tolerance.lower_is_better else 1
    points = {
        c.name: (c.speedup, sign * tolerance_metric(c, tolerance))
        for c in report.candidates
        if c.status == "ok" and c.speedup and tolerance_metric(c, tolerance) is not None
    }
    return {
        name
        for name, (speed, score) in points.items()
        if not any(s >= speed and f >= score and (s, f) != (speed, score) for s, f in points.values())
    }


def dump_dom(page: Path, profile: Path) -> str:
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium)")
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "<svg" in completed.stdout, completed.stderr[-2000:]
    return completed.stdout


def test_headless_chromium_renders_the_report_page(saved_report, tmp_path: Path):
    report, page = saved_report
    dom = parse(dump_dom(page, tmp_path / "profile"))

    assert dom.by_id("model-name").text() == MODEL_NAME
    assert dom.by_id("chosen-name").attrs["data-trial"] == report.chosen.candidate

    measured = sorted(c.name for c in report.candidates if c.status == "ok")
    points = [node for node in dom.find_all("g", css="point") if node.attrs["data-role"] != "original"]
    assert sorted(point.attrs["data-trial"] for point in points) == measured
    assert len(dom.find_all("g", css="point", role="original")) == 1

    front = expected_front(report)
    assert front, "a search always has a front"
    rows = dom.find_all("tr", css="trial")
    assert {row.attrs["data-trial"] for row in rows if row.attrs["data-front"] == "true"} == front
    for row in rows:
        marked = bool(row.find_all("td", css="front-marker"))
        assert marked == (row.attrs["data-trial"] in front), row.attrs["data-trial"]
    assert {point.attrs["data-trial"] for point in points if point.attrs["data-front"] == "true"} == front

    # Labels on the points that matter, as text rather than hover titles.
    labels = {node.text() for node in dom.find_all("text", css="point-label")}
    index = {c.name: position for position, c in enumerate(report.candidates, start=1)}
    assert "original" in labels
    assert {f"#{index[name]}" for name in front if name != report.chosen.candidate} <= labels
    if report.chosen.candidate != "original":
        assert f"#{index[report.chosen.candidate]} chosen" in labels


def test_the_legend_draws_each_role_as_the_plot_does(saved_report):
    report, page = saved_report
    dom = parse(page.read_text())
    for item in dom.find_all("g", css="legend-item"):
        role = item.attrs["data-role"]
        points = dom.find_all("g", css="point", role=role)
        legend_marker = next(node for node in item.walk() if node.tag in {"circle", "rect", "polygon", "line"})
        if role in {"tolerance", "min-speedup"}:
            line = dom.by_id(f"{role}-line")
            assert (legend_marker.attrs["stroke"], legend_marker.attrs["stroke-dasharray"]) == (line.attrs["stroke"], line.attrs["stroke-dasharray"])
        for point in points:
            marker = next(node for node in point.walk() if node.tag in {"circle", "rect", "polygon"})
            assert (marker.tag, marker.attrs["fill"]) == (legend_marker.tag, legend_marker.attrs["fill"]), role


def test_the_page_is_self_contained_and_names_the_baseline(saved_report):
    report, page = saved_report
    text = page.read_text()
    assert "<script" not in text and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    dom = parse(text)
    baseline = dom.by_id("baseline").text()
    assert f"accuracy {report.baseline_accuracy:.3f}" in baseline
    assert f"size {report.model.size_bytes / 1e3:.1f} kB" in baseline
    assert "ms at batch 1" in baseline and f"ms at batch {report.batch_size}" in baseline
    if report.chosen.candidate != "original":
        assert "the original's" in dom.by_id("summary").text()  # the size ratio
    headers = [node.text() for node in dom.by_id("trials").find_all("th")]
    assert "x @1" in headers and f"x @{report.batch_size}" in headers
    assert not any("folds" in header for header in headers)  # one split: no empty folds column


def _table_cells(table: str) -> dict[str, dict[str, str]]:
    """The CLI table's rows by '#', cut at the columns the dashed rule marks (cells may contain spaces)."""
    lines = table.splitlines()
    rule = lines[1]
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None]))
    header = [lines[0][a:b].strip() for a, b in bounds]
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = dict(zip(header, (line[a:b].strip() for a, b in bounds)))
        rows[cells["#"]] = cells
    return rows


def test_the_cli_table_and_the_page_show_the_same_figures(saved_report):
    report, page = saved_report
    table = _table_cells(format_report(report))
    dom = parse(page.read_text())
    page_headers = [node.text() for node in dom.by_id("trials").find_all("th")]
    sizes = sorted({1, report.batch_size})
    for row in dom.find_all("tr", css="trial"):
        if row.attrs["data-status"] == "skipped":
            continue  # the terminal table leaves skipped trials out, and says how many
        cells = dict(zip(page_headers, (cell.text() for cell in row.find_all("td"))))
        listed = table[row.attrs["data-index"]]
        assert listed["candidate"] == row.attrs["data-trial"]
        for size in sizes:
            assert listed[f"x@{size}"] == cells[f"x @{size}"]
            assert listed[f"ms@{size}"] == cells[f"ms @{size}*"]
        assert (listed["front"] == "★") == (row.attrs["data-front"] == "true")
        assert (listed["chosen"] == "*") == (row.attrs["data-chosen"] == "true")
    front_line = next(line for line in format_report(report).splitlines() if line.startswith("Pareto front"))
    facts = {row.find_all("th")[0].text(): row.find_all("td")[0].text() for row in dom.by_id("summary").find_all("tr")}
    assert front_line.split(": ", 1)[1] == facts["Pareto front"]
    for name in expected_front(report):
        assert name in front_line


# --- hand-built reports reproducing each finding -------------------------------------------------


def _candidate(name: str, speedup: float, agreement: float, notes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    def comparison(batch: int, ratio: float, original_ms: float) -> dict[str, Any]:
        stats = lambda ms: {"median_ms": ms, "p90_ms": ms, "runs": 20}  # noqa: E731
        return {"batch_size": batch, "original": stats(original_ms), "candidate": stats(original_ms / ratio), "speedup": ratio}

    return {
        "name": name,
        "plan": [],
        "status": "ok",
        # Each trial's own round saw the original at a different speed, as on a shared machine.
        "latency": [comparison(1, speedup / 2, 0.2 * speedup), comparison(16, speedup, 1.0 * speedup)],
        "speedup": speedup,
        "size_bytes": 20_000,
        "meets_tolerance": agreement >= 0.99,
        "fidelity": {
            "samples": 16, "outputs": [], "agreement": agreement, "cosine": 0.999, "cosine_min": 0.99,
            "sqnr_db": 30.0, "max_abs_error": 0.1,
        },  # fmt: skip
        "notes": notes or [],
        **extra,
    }


def _version_1_report(candidates: list[dict[str, Any]], chosen: str, stale_front: list[str], folds: int = 1) -> dict[str, Any]:
    """A report.json as version 1 wrote it: no version, model_name or class_name; the front from first timings."""
    return {
        "torch_version": "2.13.0", "threads": 2, "batch_size": 16,
        "tolerance": {"metric": "agreement", "threshold": 0.99}, "min_speedup": 1.05,
        "model": {
            "inputs": ["x"], "input_shapes": [[1, 8, 8]], "input_dtypes": ["float32"], "outputs": ["output"],
            "output_shapes": [[10]], "parameters": 1000, "size_bytes": 40_000, "exported_methods": [],
        },
        "calibration": {"samples": 64, "train_samples": 48, "held_out_samples": 16, "labels": False},
        "candidates": candidates,
        "search": {
            "strategy": "random", "objective": "latency", "space_size": 3, "trials_run": len(candidates), "trials_skipped": 0,
            "folds": folds, "time_budget_s": 44.5, "budget_source": "config", "elapsed_s": 31.0,
            "stopped_because": "the next trial would not fit in the time budget", "pareto": stale_front,
        },
        "chosen": {"candidate": chosen, "reason": "fastest candidate within the tolerance"},
        "seconds": 40.2,
    }  # fmt: skip


RETIMED = [
    _candidate("retimed", 2.75, 0.9375, ["finalist: re-timed with 40 rounds, 2.75x (first run 7.36x)"]),
    _candidate("chosen-one", 3.10, 1.0),
    _candidate("slow-exact", 1.20, 1.0),
]


def test_a_trial_retimed_off_the_front_loses_its_marker_and_the_chosen_one_gets_it():
    report = Report.model_validate(_version_1_report(RETIMED, "chosen-one", stale_front=["retimed"]))
    dom = parse(render_html(report))
    marked = {row.attrs["data-trial"] for row in dom.find_all("tr", css="trial") if row.attrs["data-front"] == "true"}
    assert marked == {"chosen-one"} == expected_front(report)
    table = _table_cells(format_report(report))
    assert [row["candidate"] for row in table.values() if row["front"] == "★"] == ["chosen-one"]


def test_a_version_1_report_still_reads_and_renders():
    report = Report.model_validate(_version_1_report(RETIMED, "chosen-one", stale_front=["retimed"]))
    assert (report.version, report.model_name, report.model.class_name) == (1, None, None)
    assert "report version 1" in render_html(report)


def test_the_ms_columns_compare_across_rows_and_the_page_says_why_raw_ones_do_not():
    report = Report.model_validate(_version_1_report(RETIMED, "chosen-one", stale_front=[]))
    table = _table_cells(format_report(report))
    # The original measured 1.2-3.1 ms across the rounds; each row is the median (2.75 ms) / its speed-up.
    assert table["0"]["ms@16"] == "2.750"
    assert [table[i]["ms@16"] for i in "123"] == [f"{2.75 / s:.3f}" for s in (2.75, 3.10, 1.20)]
    page = parse(render_html(report)).text()
    assert "the original itself measured 1.2-3.1 ms at batch 16 across the 3 rounds" in page
    assert "raw milliseconds from different rounds cannot be compared" in page


def test_the_time_budget_is_stated_once_one_way():
    report = Report.model_validate(_version_1_report(RETIMED, "chosen-one", stale_front=[]))
    for text in (parse(render_html(report)).text(), format_report(report)):
        assert "40.2 s in all, against a time budget of 44.5 s" in text
        assert "the trials ended at 31.0 s" in text
        assert " 44 s" not in text and " 45 s" not in text


def test_sixteen_held_out_samples_are_flagged_for_an_agreement_tolerance_of_0_99():
    report = Report.model_validate(_version_1_report(RETIMED, "chosen-one", stale_front=[]))
    dom = parse(render_html(report))
    warning = dom.by_id("confidence-warning").text()
    assert "one miss gives 0.9375 < 0.99" in warning and "268 held-out samples" in warning
    assert "warning: 16 held-out samples cannot show agreement ≥ 0.99" in format_report(report)
    bound = {row.attrs["data-trial"]: row for row in dom.find_all("tr", css="trial")}["chosen-one"].text()
    assert f"≥ {agreement_bound(1.0, 16):.3f} (n=16)" in bound


def test_the_folds_column_shows_only_with_cross_validation_and_is_filled():
    folded = [_candidate("a", 2.0, 1.0, fidelity_folds=[1.0, 1.0, 0.95], fidelity_mean=0.9833, fidelity_std=0.0236)]
    report = Report.model_validate(_version_1_report(folded, "original", stale_front=[], folds=3))
    dom = parse(render_html(report))
    headers = [node.text() for node in dom.by_id("trials").find_all("th")]
    cells = dict(zip(headers, (td.text() for td in dom.find_all("tr", css="trial")[0].find_all("td"))))
    assert cells["folds mean ± std (n)"] == "0.9833 ± 0.0236 (3)"
    # Three folds hold out every one of the 64 samples once: the bound is over 64, not one fold's 16.
    assert cells["agreement 95% low"] == f"≥ {agreement_bound(0.9833, 64):.3f} (n=64)"


def test_ticks_step_by_one_two_five():
    assert log_ticks(0.09, 110) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert linear_ticks(0.82, 1.01) == ([0.85, 0.9, 0.95, 1.0], 2)
    assert linear_ticks(0.9988, 1.0004) == ([0.999, 0.9995, 1.0], 4)


def test_wilson_lower_bound_and_the_samples_an_agreement_tolerance_needs():
    assert wilson_lower_bound(1.0, 16) == pytest.approx(16 / (16 + 1.959964**2))
    assert wilson_lower_bound(0.5, 100) == pytest.approx(0.4038, abs=1e-4)
    assert samples_to_show(0.99) == 381
    assert wilson_lower_bound(1.0, 381) >= 0.99 > wilson_lower_bound(1.0, 380)
