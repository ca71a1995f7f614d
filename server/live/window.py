"""What live traffic says about a model: its recent requests summarized, and the guard's verdict on them.

The workers record one `LiveSample` per served request (see observer.py). The model's status, the
/metrics gauges and the guard all summarize the same rows with `summarize`, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from optimizer_pipeline import Z_95, PipelineConfig, wilson_interval

from .routing import Guard

if TYPE_CHECKING:  # both import this module
    from ..http.schemas import ModelInfo
    from ..store import Store

LIVE_VERSION = 1
# Before this many compared requests the guard does not act, however bad they look: a few requests
# of one odd client are not evidence about the traffic.
MIN_EVIDENCE = 20
# When a drift figure earns a warning in the status.
DRIFT_OUTSIDE_SHARE = 0.01
DRIFT_MEAN_SHIFT = 0.5  # in calibration standard deviations
DRIFT_STD_RATIO = (0.5, 2.0)


class InputMoments(BaseModel):
    """One input of one request, against the calibration batch: z = (x - calibration mean) / calibration std."""

    values: int
    outside: int = Field(description="values outside the calibration batch's [min, max]")
    z_sum: float
    z_square_sum: float


class LiveSample(BaseModel):
    """One served request, as the worker records it (a row of the store's live table)."""

    version: int = LIVE_VERSION
    revision: int = Field(description="the routing revision it was served under; the guard judges the current one only")
    served: str
    served_ms: float
    other: str | None = Field(None, description="the variant also run on it (shadow or split sample)")
    other_ms: float | None = Field(None, description="the other variant's forward, in its thread's CPU time (ms)")
    agree: bool | None = Field(None, description="top-1 of every sample agreed (class-score outputs only)")
    cosine: float | None = None
    max_abs_diff: float | None = None
    inputs: list[InputMoments] = Field(default_factory=list)


class VariantLatency(BaseModel):
    variant: str
    clock: Literal["wall", "thread_cpu"] = Field(
        "wall",
        description="wall: forwards that answered requests; thread_cpu: shadow forwards, which run at the lowest "
        "priority, timed in their thread's CPU time (their wall time would measure the wait for a core)",
    )
    requests: int
    p50_ms: float
    p99_ms: float


class LiveFidelity(BaseModel):
    compared: int = Field(description="requests of the current routing revision run on both variants")
    agreement: float | None = None
    agreement_lower: float | None = Field(None, description="95% Wilson lower bound of the agreement")
    agreement_upper: float | None = Field(None, description="95% Wilson upper bound of the agreement")
    cosine_mean: float | None = None
    cosine_upper: float | None = Field(None, description="95% upper bound of the mean cosine")
    cosine_min: float | None = None
    max_abs_diff: float | None = None


class InputDrift(BaseModel):
    input: str
    values: int
    outside_range_share: float = Field(description="share of live values outside the calibration batch's range")
    mean_shift: float = Field(description="live mean minus calibration mean, in calibration standard deviations")
    std_ratio: float = Field(description="live standard deviation over the calibration batch's")
    warning: str | None = None


class GuardVerdict(BaseModel):
    guard: Guard
    state: Literal["off", "watching", "ok", "tripped"]
    reason: str


class LiveStatus(BaseModel):
    requests: int = Field(description="recent requests summarized (at most the guard's window)")
    latency: list[VariantLatency]
    speedup: float | None = Field(None, description="live p50 of the original over the optimized's, per forward call")
    fidelity: LiveFidelity
    drift: list[InputDrift]
    guard: GuardVerdict
    warnings: list[str] = Field(default_factory=list)


def default_guard(config: PipelineConfig | None, output_shapes: Sequence[Sequence[int]]) -> Guard:
    """The model's optimization tolerance, as a live guard (what the variant was chosen to keep)."""
    class_scores = any(len(shape) == 1 and shape[0] > 1 for shape in output_shapes)
    tolerance = config.tolerance if config is not None else None
    if tolerance is None:
        # As the search's default: agreement where there are class scores, and cosine always (an
        # embedding's argmax agrees while its direction drifts).
        return Guard(min_agreement=0.99 if class_scores else None, min_cosine=0.99)
    if tolerance.metric == "agreement":
        return Guard(min_agreement=tolerance.threshold)
    if tolerance.metric == "cosine":
        return Guard(min_cosine=tolerance.threshold)
    if tolerance.metric == "accuracy_drop" and class_scores:
        # Without live labels: a request whose top-1 agrees cannot lose accuracy, so disagreement bounds the drop.
        return Guard(min_agreement=max(0.5, 1 - tolerance.threshold))
    return Guard(min_cosine=0.99)


def live_status(store: Store, info: ModelInfo) -> LiveStatus:
    """A model's live status from its newest samples: what the status route, /metrics and the guard all read."""
    guard = info.effective_guard()
    return summarize(store.live_samples(info.id, guard.window), info.routing_revision, info.summary.inputs, guard)


def summarize(samples: Sequence[LiveSample], revision: int, input_names: Sequence[str], guard: Guard) -> LiveStatus:
    """`samples` newest first, at most the guard's window of them."""
    fidelity = _fidelity([s for s in samples if s.revision == revision and s.other is not None])
    drift = _drift(samples, input_names)
    latency = _latency(samples)
    # A variant's served (wall) figure where it has one, else its shadow (CPU) one.
    by_name = {entry.variant: entry for entry in sorted(latency, key=lambda entry: entry.clock == "wall")}
    speedup = by_name["original"].p50_ms / by_name["optimized"].p50_ms if {"original", "optimized"} <= set(by_name) else None
    warnings = [f"input {d.input}: {d.warning}" for d in drift if d.warning]
    return LiveStatus(
        requests=len(samples), latency=latency, speedup=speedup, fidelity=fidelity, drift=drift, guard=judge(fidelity, guard), warnings=warnings
    )


def judge(fidelity: LiveFidelity, guard: Guard) -> GuardVerdict:
    """Trip when the evidence shows the variant below a threshold: the upper bound under it, or a full window's estimate.

    Not the lower bound: at a window of 500, one disagreement puts the lower bound at 0.989, so a
    guard on it would take out a variant that agrees 99.8% of the time with a 0.99 threshold.
    """
    if not guard.enabled:
        return GuardVerdict(guard=guard, state="off", reason="the guard is disabled")
    if fidelity.compared < MIN_EVIDENCE:
        return GuardVerdict(guard=guard, state="watching", reason=f"{fidelity.compared} of the {MIN_EVIDENCE} compared requests it needs to judge")
    full = fidelity.compared >= guard.window
    checks = (
        ("agreement", guard.min_agreement, fidelity.agreement, fidelity.agreement_upper),
        ("cosine", guard.min_cosine, fidelity.cosine_mean, fidelity.cosine_upper),
    )
    for metric, threshold, estimate, upper in checks:
        if threshold is None or estimate is None:
            continue
        if upper is not None and upper < threshold:
            return GuardVerdict(
                guard=guard,
                state="tripped",
                reason=f"live {metric} {estimate:.4f} over {fidelity.compared} requests; its 95% upper bound {upper:.4f} is below {threshold}",
            )
        if full and estimate < threshold:
            return GuardVerdict(
                guard=guard, state="tripped", reason=f"live {metric} {estimate:.4f} over a full window of {fidelity.compared} requests is below {threshold}"
            )
    shown = ", ".join(f"{metric} {estimate:.4f}" for metric, threshold, estimate, _ in checks if threshold is not None and estimate is not None)
    return GuardVerdict(guard=guard, state="ok", reason=f"{shown or 'nothing comparable'} over {fidelity.compared} requests")


def _fidelity(compared: Sequence[LiveSample]) -> LiveFidelity:
    result = LiveFidelity(compared=len(compared))
    votes = [s.agree for s in compared if s.agree is not None]
    if votes:
        result.agreement = sum(votes) / len(votes)
        result.agreement_lower, result.agreement_upper = wilson_interval(result.agreement, len(votes))
    cosines = [s.cosine for s in compared if s.cosine is not None]
    if cosines:
        mean = sum(cosines) / len(cosines)
        spread = math.sqrt(sum((c - mean) ** 2 for c in cosines) / max(1, len(cosines) - 1))
        result.cosine_mean, result.cosine_min = mean, min(cosines)
        result.cosine_upper = mean + Z_95 * spread / math.sqrt(len(cosines))
    differences = [s.max_abs_diff for s in compared if s.max_abs_diff is not None]
    result.max_abs_diff = max(differences) if differences else None
    return result


def _drift(samples: Sequence[LiveSample], input_names: Sequence[str]) -> list[InputDrift]:
    drift = []
    for position, name in enumerate(input_names):
        moments = [s.inputs[position] for s in samples if len(s.inputs) > position]
        values = sum(m.values for m in moments)
        if not values:
            continue
        mean = sum(m.z_sum for m in moments) / values
        variance = max(0.0, sum(m.z_square_sum for m in moments) / values - mean * mean)
        entry = InputDrift(
            input=name,
            values=values,
            outside_range_share=sum(m.outside for m in moments) / values,
            mean_shift=mean,
            std_ratio=math.sqrt(variance),
        )
        entry.warning = _drift_warning(entry)
        drift.append(entry)
    return drift


def _drift_warning(drift: InputDrift) -> str | None:
    problems = []
    if drift.outside_range_share > DRIFT_OUTSIDE_SHARE:
        problems.append(f"{drift.outside_range_share:.1%} of live values fall outside the calibration range")
    if abs(drift.mean_shift) > DRIFT_MEAN_SHIFT:
        problems.append(f"the mean moved {drift.mean_shift:+.2f} calibration standard deviations")
    if not DRIFT_STD_RATIO[0] <= drift.std_ratio <= DRIFT_STD_RATIO[1]:
        problems.append(f"the spread is {drift.std_ratio:.2f}x the calibration batch's")
    if not problems:
        return None
    return "; ".join(problems) + " (static int8 is calibrated on that batch: re-upload with a calibration batch like today's traffic)"


def _latency(samples: Sequence[LiveSample]) -> list[VariantLatency]:
    """Per variant and clock: served forwards in wall time, shadow forwards in thread CPU time (never mixed)."""
    times: dict[tuple[str, str], list[float]] = {}
    for sample in samples:
        times.setdefault((sample.served, "wall"), []).append(sample.served_ms)
        if sample.other is not None and sample.other_ms is not None:
            times.setdefault((sample.other, "thread_cpu"), []).append(sample.other_ms)
    return [
        VariantLatency(variant=name, clock=clock, requests=len(values), p50_ms=_quantile(values, 0.5), p99_ms=_quantile(values, 0.99))
        for (name, clock), values in sorted(times.items())
    ]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
