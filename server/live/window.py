"""What live traffic says about a model: its recent requests summarized, and the guard's verdict on them.

The workers record one `LiveSample` (wire.contract.live) per served request (see observer.py). The
model's status, the /metrics gauges and the guard all summarize the same rows with `summarize`, so
they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wire.contract.confidence import Z_95, wilson_interval
from wire.contract.live import GuardVerdict, InputDrift, LiveFidelity, LiveSample, LiveStatus, VariantLatency
from wire.contract.models import ModelInfo
from wire.contract.routing import Guard

if TYPE_CHECKING:  # the store reads and writes these records
    from ..store import Store

# Before this many compared requests the guard does not act, however bad they look: a few requests
# of one odd client are not evidence about the traffic.
MIN_EVIDENCE = 20
# When a drift figure earns a warning in the status.
DRIFT_OUTSIDE_SHARE = 0.01
DRIFT_MEAN_SHIFT = 0.5  # in calibration standard deviations
DRIFT_STD_RATIO = (0.5, 2.0)


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
