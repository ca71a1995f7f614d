"""Compound plans for the default search: structured pruning → reconstruction → distillation → int8.

Tried after the built-in single passes, and only where they can pay and be trusted:
- int8 alone leaves headroom: an int8 candidate met the tolerance with fidelity to spare
  (cosine ≥ HEADROOM_COSINE), so removing channels on top of it may still fit in the budget;
- the held-out samples can certify it (MIN_HELD_OUT): pruning moves outputs further than int8, so
  the tolerance must be judged on enough samples that a real loss shows;
- time is left in the optimization's budget (`time_budget_seconds`) for measuring each channel
  group's sensitivity, the bulk of the first pruned plan (minutes on a ResNet-18 at 96x96), which
  is estimated from the model's group count and its measured forward time before anything is queued.
Each runtime whose int8 met the tolerance gets its own tail (torch static int8, OpenVINO NNCF int8,
ONNX Runtime static int8). The pruning is allocated by measured sensitivity, at several amounts of
the model's MACs, the largest first: a smaller amount is tried only where the larger one missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import jit
from ..candidates import BuiltCandidate, Reference
from ..channel_groups import analyse
from ..channel_groups.allocation import LEVELS
from ..passes.pruning.structured import SENSITIVITY_SAMPLES, SHAPE_PROBE_SAMPLES
from ..passes.base import is_known_pass, parse_pass_spec
from ..passes.plan import Plan

# Why 256: the tolerance passes agreement unless its 95% Wilson interval lies wholly below the
# threshold. At 0.99 and 256 held-out samples that admits at most 5 disagreements (0.980); at 128 it
# admits 3 (0.977) and at 64 two (0.969). A pruned plan that loses two or three points of agreement
# must not pass on too few samples, so below 256 only the lighter (int8, float) plans are offered.
# With the default split that is an unlabeled set of 512 (half is held out) or a 1024-sample calibration batch.
MIN_HELD_OUT = 256
HEADROOM_COSINE = 0.995
AMOUNTS = (0.5, 0.3)  # shares of the conv / linear MACs removed; largest first
# The int8 plan each tail continues, keyed by the first plan's last pass (the tail's runtime).
INT8_TAILS: dict[str, list[dict[str, Any]]] = {
    "quantize_static": [{"pass": "quantize_static"}],
    "ov_quantize": [{"pass": "onnx_export"}, {"pass": "ov_convert"}, {"pass": "ov_quantize"}],
    "ort_quantize_static": [{"pass": "onnx_export"}, {"pass": "ort_quantize_static"}],
}
FINETUNE_SHARE = 0.15  # of the time left, per amount: distillation stops after this many steps
STEP_COST = 3.0  # a training step (forward + backward) costs about three forwards at the same batch
MIN_FINETUNE_STEPS = 20  # fewer would not move the weights: reconstruction alone then
MAX_FINETUNE_STEPS = 500  # early stopping on the internal split usually ends it sooner
# Forwards over the samples per sensitivity measurement: the pruned copy's, the original's and the
# copy's probes for the refit, and the original's reference, taken once but counted for the rest.
SENSITIVITY_FORWARDS = 4


@dataclass
class CompoundDecision:
    plans: list[Plan]
    note: str


def compound_plans(built: list[BuiltCandidate], reference: Reference, seconds_left: float) -> CompoundDecision:
    """The compound plans worth trying after the first trials, and why (or why none)."""
    if not is_known_pass("prune_structured"):
        return CompoundDecision([], "compound plans: structured pruning is not available in this build")
    held_out = len(reference.held_out)
    if held_out < MIN_HELD_OUT:
        return CompoundDecision(
            [],
            f"compound plans (pruning → distillation → int8) not tried: {held_out} held-out samples cannot certify them "
            f"(at least {MIN_HELD_OUT}); upload an unlabeled set of {2 * (MIN_HELD_OUT - held_out)} or more inputs (--unlabeled)",
        )
    tails = [name for name in INT8_TAILS if _has_headroom(built, name)]
    if not tails:
        return CompoundDecision([], f"compound plans not tried: no int8 candidate met the tolerance with cosine ≥ {HEADROOM_COSINE}")
    if seconds_left <= 0:
        return CompoundDecision([], "compound plans not tried: no time left in time_budget_seconds; raise it to try them")
    groups, sensitivity_seconds = _sensitivity_cost(built, reference)
    if sensitivity_seconds > seconds_left:
        return CompoundDecision([], (
            f"compound plans not tried: measuring the sensitivity of {groups} channel groups would take about "
            f"{sensitivity_seconds:.0f} s, and {max(seconds_left, 0):.0f} s are left in time_budget_seconds; raise it to try them"
        ))
    steps = _finetune_steps(built, seconds_left - sensitivity_seconds)
    plans = []
    for amount in AMOUNTS:
        prefix = [{"pass": "prune_structured", "scope": "sensitivity", "amount_of": "macs", "amount": amount}]
        if steps:
            prefix.append({"pass": "finetune", "steps": steps})
        plans += [Plan(parse_pass_spec(spec) for spec in prefix + INT8_TAILS[tail]) for tail in tails]
    tuned = f"distillation for {steps} steps" if steps else "no distillation (too little time for it)"
    return CompoundDecision(
        plans,
        f"compound plans tried: pruning {'/'.join(f'{a:.0%}' for a in AMOUNTS)} of the MACs by sensitivity → reconstruction → "
        f"{tuned} → int8 on {', '.join(tails)}; {held_out} held-out samples certify them",
    )


def _has_headroom(built: list[BuiltCandidate], last_pass: str) -> bool:
    for candidate in built:
        report = candidate.report
        if report.status == "ok" and report.meets_tolerance and report.plan and report.plan[-1]["pass"] == last_pass:
            if report.fidelity is not None and report.fidelity.cosine >= HEADROOM_COSINE:
                return True
    return False


def _sensitivity_cost(built: list[BuiltCandidate], reference: Reference, clock: Callable[[], float] = time.perf_counter) -> tuple[int, float]:
    """(prunable channel groups, seconds to measure them all): per group and level, a copy is
    reloaded and analysed (timed here once) and SENSITIVITY_FORWARDS forwards run over the samples."""
    started = clock()
    with jit.quiet_torch():
        analysis = analyse(jit.reload(reference.original), reference.train.head(SHAPE_PROBE_SAMPLES).inputs)
    analyse_seconds = clock() - started
    groups = sum(group.pinned_reason is None for group in analysis.groups)
    latency = [c for b in built for c in b.report.latency[-1:]]
    per_sample = max((c.original.median_ms / 1000 / c.batch_size for c in latency if c.batch_size), default=0.0)
    measurement = 2 * analyse_seconds + SENSITIVITY_FORWARDS * SENSITIVITY_SAMPLES * per_sample
    return groups, groups * len(LEVELS) * measurement


def _finetune_steps(built: list[BuiltCandidate], seconds_left: float) -> int:
    """Steps that fit FINETUNE_SHARE of the time left, at the original's measured cost per batch."""
    forward_ms = max((c.original.median_ms for b in built for c in b.report.latency[-1:]), default=0.0)
    if forward_ms <= 0:
        return 0
    steps = int(FINETUNE_SHARE * seconds_left * 1000 / (STEP_COST * forward_ms))
    return min(steps, MAX_FINETUNE_STEPS) if steps >= MIN_FINETUNE_STEPS else 0
