"""The report's scatter plot as inline SVG: speed-up (log scale) against the tolerance metric.

Every point that matters carries a text label, and each role has its own shape as well as its own
colour, so the plot reads in a black-and-white print. Elements carry classes and data-attributes
(role, trial, index) that tests and readers can select by.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from wire.report_text.text import speedup_text
from wire.report_text.view import ReportView, TrialRow

WIDTH, HEIGHT = 820, 480
LEFT, RIGHT, TOP, BOTTOM = 86, 24, 16, 110  # the bottom margin holds tick labels, the axis label and the legend
FONT = 12
CHAR_WIDTH = 0.6 * FONT  # an estimate for placing labels; no layout engine runs here

ROLE_STYLE = {
    # role: (fill, stroke, radius); shapes differ too, see _marker
    "chosen": ("#0a7d32", "#000", 8),
    "front": ("#1a5fd6", "#1a5fd6", 6),
    "other": ("#b8b8b8", "#777", 4.5),
    "original": ("#222", "#222", 5.5),
}
LINE_STYLE = {
    "tolerance": 'stroke="#c00" stroke-width="1.5" stroke-dasharray="7 4"',
    "min-speedup": 'stroke="#a05a00" stroke-width="1.5" stroke-dasharray="2 3"',
}
ROLE_LEGEND = {
    "chosen": "chosen (served)",
    "front": "Pareto front",
    "other": "other trials",
    "original": "original",
}


@dataclass(frozen=True)
class _Axis:
    low: float
    high: float
    start: float  # pixel of `low`
    end: float  # pixel of `high`

    def pixel(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def render_plot(view: ReportView) -> str:
    plotted = plotted_rows(view)
    tolerance = view.tolerance
    speeds = [row.speedups[view.report.batch_size] for row in plotted] + [1.0, view.report.min_speedup]
    x_low, x_high = _padded(math.log10(min(speeds)), math.log10(max(speeds)), 0.06, 0.05)
    best = 0.0 if tolerance.lower_is_better else tolerance.best_possible  # the original's own score; None: unbounded (SQNR)
    values = [row.metric for row in plotted] + [tolerance.threshold] + ([best] if best is not None else [])
    y_low, y_high = _padded(min(values), max(values), 0.08, 0.01)
    x_axis = _Axis(x_low, x_high, LEFT, WIDTH - RIGHT)
    y_axis = _Axis(y_low, y_high, HEIGHT - BOTTOM, TOP)

    def position(speedup: float, metric: float) -> tuple[float, float]:
        return x_axis.pixel(math.log10(speedup)), y_axis.pixel(metric)

    parts = [
        f'<svg id="trial-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="speed-up against {html.escape(tolerance.metric)} for every measured trial" font-size="{FONT}" '
        'font-family="system-ui, sans-serif">',
        _acceptable_region(view, x_axis, y_axis),
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="#888"/>',
        *_x_ticks(x_axis),
        *_y_ticks(y_axis),
        *_thresholds(view, x_axis, y_axis),
        _front_line(view, plotted, position),
    ]
    # An unbounded metric (SQNR) is infinite for the original itself: pin it to the top edge.
    original = (x_axis.pixel(0.0), y_axis.pixel(best) if best is not None else TOP)
    points = [(row, *position(row.speedups[view.report.batch_size], row.metric)) for row in plotted]
    # Unlabelled points first, so that labelled ones are drawn on top of them.
    for row, x, y in sorted(points, key=lambda point: _role(point[0]) != "other"):
        title = f"#{row.index} {row.name}: {speedup_text(row.speedups[view.report.batch_size])}, {tolerance.metric} {row.metric:.4f}"
        attributes = {"trial": row.name, "index": str(row.index), "front": _flag(row.on_front), "chosen": _flag(row.chosen)}
        parts.append(_point(_role(row), x, y, title, attributes))
    parts.append(_point("original", *original, "original: 1.00x, the reference", {"trial": "original"}))
    labels = _LabelPlacer([(x, y) for _, x, y in points] + [original])
    # The chosen point's label is placed first, so it gets the best spot.
    for row, x, y in sorted(points, key=lambda point: not point[0].chosen):
        if _role(row) != "other":
            parts.append(labels.place(_role(row), x, y, f"#{row.index} chosen" if row.chosen else f"#{row.index}"))
    parts.append(labels.place("original", *original, "original"))
    parts += _axis_labels(view)
    parts += _legend(view)
    parts.append("</svg>")
    return "\n".join(part for part in parts if part)


def plotted_rows(view: ReportView) -> list[TrialRow]:
    """Trials with a speed-up at the served batch and a finite metric: one point each."""
    return [
        row
        for row in view.rows
        if row.candidate.status == "ok" and row.speedups[view.report.batch_size] and row.metric is not None and math.isfinite(row.metric)
    ]


def _role(row: TrialRow) -> str:
    return "chosen" if row.chosen else ("front" if row.on_front else "other")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _padded(low: float, high: float, share: float, minimum: float) -> tuple[float, float]:
    pad = max((high - low) * share, minimum)
    return low - pad, high + pad


def _marker(role: str, x: float, y: float) -> str:
    fill, stroke, radius = ROLE_STYLE[role]
    if role == "original":
        return f'<rect x="{x - radius:.1f}" y="{y - radius:.1f}" width="{2 * radius}" height="{2 * radius}" fill="{fill}" stroke="{stroke}"/>'
    if role == "front":
        r = radius * 1.25
        return f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}" fill="{fill}" stroke="{stroke}"/>'
    width = 2 if role == "chosen" else 1
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>'


def _point(role: str, x: float, y: float, title: str, attributes: dict[str, str]) -> str:
    data = " ".join(f'data-{key}="{html.escape(value)}"' for key, value in attributes.items())
    return f'<g class="point point-{role}" data-role="{role}" {data}>{_marker(role, x, y)}<title>{html.escape(title)}</title></g>'


class _LabelPlacer:
    """Puts each label next to its point, clear of every point and of the labels already placed."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        reach = ROLE_STYLE["chosen"][2]
        self._boxes = [(x - reach, y - reach, x + reach, y + reach) for x, y in points]

    def place(self, role: str, x: float, y: float, text: str) -> str:
        width, height = len(text) * CHAR_WIDTH, FONT + 2
        gap = ROLE_STYLE["chosen"][2] + 3
        spots = [(x + gap, y - height / 2), (x - gap - width, y - height / 2), (x - width / 2, y - gap - height), (x - width / 2, y + gap)]
        spots += [(x + gap, y - height / 2 + shift * height) for shift in (1, -1, 2, -2, 3, -3)]
        inside = [spot for spot in spots if LEFT <= spot[0] and spot[0] + width <= WIDTH - RIGHT and TOP <= spot[1] and spot[1] + height <= HEIGHT - BOTTOM]
        boxes = [(left, top, left + width, top + height) for left, top in inside or spots]
        box = next((box for box in boxes if not any(_overlap(box, other) for other in self._boxes)), boxes[0])
        self._boxes.append(box)
        weight = ' font-weight="700"' if role == "chosen" else ""
        return (
            f'<text class="point-label" data-role="{role}" x="{box[0]:.1f}" y="{box[1] + FONT - 1:.1f}"{weight} fill="#000" '
            f'stroke="#fff" stroke-width="3" paint-order="stroke">{html.escape(text)}</text>'
        )


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _acceptable_region(view: ReportView, x_axis: _Axis, y_axis: _Axis) -> str:
    """Shade where a trial qualifies: within the tolerance and at least the minimum speed-up."""
    x = max(x_axis.start, x_axis.pixel(math.log10(view.report.min_speedup)))
    threshold_y = min(max(y_axis.pixel(view.tolerance.threshold), TOP), HEIGHT - BOTTOM)
    top, bottom = (threshold_y, HEIGHT - BOTTOM) if view.tolerance.lower_is_better else (TOP, threshold_y)
    return f'<rect class="qualifying-region" x="{x:.1f}" y="{top:.1f}" width="{WIDTH - RIGHT - x:.1f}" height="{bottom - top:.1f}" fill="#e9f6ec"/>'


def _thresholds(view: ReportView, x_axis: _Axis, y_axis: _Axis) -> list[str]:
    y = y_axis.pixel(view.tolerance.threshold)
    x = x_axis.pixel(math.log10(view.report.min_speedup))
    return [
        f'<line id="tolerance-line" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" {LINE_STYLE["tolerance"]}/>',
        f'<line id="min-speedup-line" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" {LINE_STYLE["min-speedup"]}/>',
    ]


def _front_line(view: ReportView, plotted: list[TrialRow], position) -> str:
    front = sorted((row for row in plotted if row.on_front), key=lambda row: row.speedups[view.report.batch_size])
    if len(front) < 2:
        return ""
    points = " ".join("{:.1f},{:.1f}".format(*position(row.speedups[view.report.batch_size], row.metric)) for row in front)
    return f'<polyline class="front-line" points="{points}" fill="none" stroke="#1a5fd6" stroke-width="1.2" stroke-dasharray="2 3"/>'


def _x_ticks(axis: _Axis) -> list[str]:
    parts = []
    for value in log_ticks(10**axis.low, 10**axis.high):
        x = axis.pixel(math.log10(value))
        parts.append(f'<line x1="{x:.1f}" y1="{HEIGHT - BOTTOM}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM + 5}" stroke="#666"/>')
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#000" stroke-opacity="0.07"/>')
        parts.append(f'<text class="tick x-tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 19}" text-anchor="middle">{value:g}x</text>')
    return parts


def _y_ticks(axis: _Axis) -> list[str]:
    ticks, decimals = linear_ticks(axis.low, axis.high)
    parts = []
    for value in ticks:
        y = axis.pixel(value)
        parts.append(f'<line x1="{LEFT - 5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#666"/>')
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#000" stroke-opacity="0.07"/>')
        parts.append(f'<text class="tick y-tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{value:.{decimals}f}</text>')
    return parts


def _axis_labels(view: ReportView) -> list[str]:
    middle_y = TOP + (HEIGHT - TOP - BOTTOM) / 2
    return [
        f'<text class="axis-label" x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - BOTTOM + 40}" text-anchor="middle">'
        f"speed-up at batch {view.report.batch_size} (log scale; right is faster)</text>",
        f'<text class="axis-label" x="16" y="{middle_y}" text-anchor="middle" transform="rotate(-90 16 {middle_y})">'
        f"{html.escape(view.tolerance.metric)} ({'lower' if view.tolerance.lower_is_better else 'higher'} is better)</text>",
    ]


def _legend(view: ReportView) -> list[str]:
    """Markers and threshold lines, each drawn exactly as in the plot. Two rows: points, then lines."""
    tolerance = view.tolerance
    lines = {
        "tolerance": f"tolerance: {tolerance.metric} {'≤' if tolerance.lower_is_better else '≥'} {tolerance.threshold:g}",
        "min-speedup": f"minimum speed-up: {view.report.min_speedup:.2f}x",
    }
    parts = ['<g id="plot-legend">']
    x, y = LEFT, HEIGHT - 34
    for role, text in ROLE_LEGEND.items():
        parts.append(f'<g class="legend-item" data-role="{role}">{_marker(role, x + 8, y - 4)}<text x="{x + 22}" y="{y}">{text}</text></g>')
        x += 34 + len(text) * CHAR_WIDTH
    x, y = LEFT, HEIGHT - 12
    for kind, text in lines.items():
        parts.append(
            f'<g class="legend-item" data-role="{kind}"><line x1="{x}" y1="{y - 4}" x2="{x + 26}" y2="{y - 4}" {LINE_STYLE[kind]}/>'
            f'<text x="{x + 32}" y="{y}">{html.escape(text)}</text></g>'
        )
        x += 50 + len(text) * CHAR_WIDTH
    parts.append("</g>")
    return parts


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 steps per decade between low and high; finer linear steps when the range is under one such step."""
    ticks = [
        mantissa * 10.0**exponent
        for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
        for mantissa in (1, 2, 5)
        if low <= mantissa * 10.0**exponent <= high
    ]
    return ticks if len(ticks) >= 3 else linear_ticks(low, high)[0]


def linear_ticks(low: float, high: float, target: int = 5) -> tuple[list[float], int]:
    """Ticks on a 1-2-5 step (…, 0.01, 0.02, 0.05, 0.1, …) about `target` in number, and the decimals they need."""
    raw = (high - low) / target
    exponent = math.floor(math.log10(raw))
    step = min((m * 10.0**exponent for m in (1, 2, 5, 10) if m * 10.0**exponent >= raw))
    first = math.ceil(low / step - 1e-9)
    ticks = [round(index * step, 12) for index in range(first, math.floor(high / step + 1e-9) + 1)]
    return ticks, max(0, -math.floor(math.log10(step) + 1e-9))
