"""`prune_structured`: remove whole channels and neurons, the pruning that makes dense kernels faster.

Coupled channels come from `channel_groups` (residual adds, concats, depthwise convs, flatten into
Linear...). Groups it cannot follow are left whole and listed with the reason. The result must run
on the calibration batch with the original's output names and shapes, or the pass fails.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from ... import jit
from ...intake.calibration import Batch
from ...channel_groups import (
    ChannelAnalysis, ChannelGroup, activation_scores, analyse, magnitude_scores, pruned_consumers, recalibrate_batchnorm,
    reconstruct, remove_components,
)
from ...channel_groups.allocation import Allocation, allocate
from ...channel_groups.cost import CostModel
from ...fidelity.measures import compare_outputs
from ...measure import watch
from ...intake.model_loading import run_model
from ..base import PassConfig, PassOutput, register
from .sensitivity_memo import fingerprint, remembered

# Enough samples that the batch dim never equals a channel count by accident (shapes are probed).
SHAPE_PROBE_SAMPLES = 3
CHECK_SAMPLES = 8
# Samples each sensitivity measurement prunes, refits and runs (scope "sensitivity").
SENSITIVITY_SAMPLES = 128
# Samples the least-squares refit and the BatchNorm re-estimate read at most, calibration and unlabeled
# together: the refit keeps MAX_ROWS rows a layer whatever the count, so more samples mean more variety.
FITTING_SAMPLES = 256
# 1: no reconstruction; 2: `reconstruct` added (on unless a stored version-1 config is re-run).
CONFIG_VERSION = 2


class PruneStructuredConfig(PassConfig):
    name: Literal["prune_structured"] = Field("prune_structured", alias="pass")
    amount: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of the prunable channels to remove")
    # Layer scope: 2.9x against 1.75x for global at 50% on a ResNet-18 shape (global spares the wide,
    # expensive early stages), and the same accuracy after fine-tuning on digits and Fashion-MNIST CNNs.
    scope: Literal["global", "layer", "sensitivity"] = Field(
        "layer",
        description="layer: remove `amount` of each group; global: rank channels across all groups; sensitivity: "
        "measure each group's loss when pruned alone and spread `amount` so that sensitive groups stay wider",
    )
    amount_of: Literal["channels", "macs"] = Field(
        "channels", description="with scope sensitivity: `amount` is a share of the prunable channels, or of the model's conv/linear MACs"
    )
    importance: Literal["l1", "l2", "activation"] = Field(
        "l1", description="weight magnitude over the whole group, or mean |activation| on the calibration batch"
    )
    round_to: int = Field(8, ge=1, le=1024, description="kept channel counts are multiples of this (fast kernels like it)")
    protect: tuple[str, ...] = Field((), description="module names whose channels are never removed")
    recalibrate_batchnorm: bool = Field(
        True, description="re-estimate BatchNorm running statistics on the calibration batch after pruning"
    )
    reconstruct: bool = Field(
        True,
        description="refit each layer that lost input channels by least squares on the calibration batch, so its "
        "output matches the original's",
    )
    reconstruction_ridge: float = Field(
        1e-2, ge=0, le=10, description="pull of the refit towards the sliced original weights (relative to the inputs' power)"
    )
    version: int = Field(CONFIG_VERSION, ge=1, le=CONFIG_VERSION, description="config schema version")

    @model_validator(mode="before")
    @classmethod
    def _as_stored(cls, value):
        # A version-1 config predates reconstruction: re-running it must do what it did then.
        if isinstance(value, dict) and value.get("version") == 1:
            value = {"reconstruct": False, **value}
        return value


class StructuredPruningError(RuntimeError):
    """The pruned model no longer runs, or its outputs changed name or shape."""


@register(PruneStructuredConfig)
def prune_structured(model: jit.ScriptModule, calibration: Batch, config: PruneStructuredConfig) -> PassOutput:
    check_batch = calibration.head(min(CHECK_SAMPLES, len(calibration)))
    expected = [(name, tuple(t.shape)) for name, t in run_model(model, check_batch)]
    parameters_before = _parameter_count(model)
    with jit.quiet_torch():
        analysis = analyse(model, calibration.head(SHAPE_PROBE_SAMPLES).inputs, config.protect)
    if analysis.whole_model_reason:
        return PassOutput(model, {"parameters_before": parameters_before, "parameters_after": parameters_before,
                                  "not_pruned": analysis.whole_model_reason})
    fitting = calibration.for_fitting(FITTING_SAMPLES)  # with the unlabeled set, if one was uploaded
    scores = _scores(model, analysis, fitting, config)
    allocation = None
    if config.scope == "sensitivity":
        allocation = _allocate(model, analysis, scores, fitting, config)
        keep_counts = allocation.keep
    else:
        keep_counts = _keep_counts(analysis, scores, config)
    removed = {
        component
        for group, keep in keep_counts.items()
        for component in _weakest(group, len(group.components) - keep, scores)
    }
    original = jit.reload(model) if config.reconstruct else None
    with jit.quiet_torch():
        remove_components(model, analysis, removed)
        pruned = jit.reload(model)
    _check_outputs(pruned, check_batch, expected)
    details = _details(analysis, keep_counts, parameters_before, _parameter_count(pruned), allocation)
    if original is not None and removed:
        with jit.quiet_torch():
            refits = reconstruct(original, pruned, pruned_consumers(analysis, removed), fitting, config.reconstruction_ridge)
        details["reconstructed"] = [
            {"layer": r.layer, "error_before": round(r.error_before, 5), "error_after": round(r.error_after, 5), "rows": r.rows}
            for r in refits
        ]
    if config.recalibrate_batchnorm and removed:
        # Removed inputs shift the statistics every later BatchNorm normalizes with.
        with jit.quiet_torch():
            details["recalibrated_batchnorm"] = recalibrate_batchnorm(pruned, fitting)
    details["fitting_samples"] = {"calibration": min(len(calibration), len(fitting)), "unlabeled": max(0, len(fitting) - len(calibration))}
    return PassOutput(pruned, details)


def _weakest(group: ChannelGroup, count: int, scores: dict[int, float]) -> list[int]:
    return sorted(group.components, key=lambda c: scores.get(c, 0.0))[:count]


def _allocate(
    model: jit.ScriptModule, analysis: ChannelAnalysis, scores: dict[int, float], calibration: Batch, config: PruneStructuredConfig
) -> Allocation:
    """Per-group keep counts from each group's measured loss when pruned alone (on a copy)."""
    prunable = [group for group in analysis.groups if group.pinned_reason is None]
    sample = calibration.head(min(len(calibration), SENSITIVITY_SAMPLES))
    reference = run_model(model, sample)

    def loss_when_removed(group: ChannelGroup, count: int) -> float:
        copy = jit.reload(model)
        with jit.quiet_torch():
            # Shape rewrites point into the analysed model's own graph: the copy needs its own analysis.
            own = analyse(copy, calibration.head(SHAPE_PROBE_SAMPLES).inputs, config.protect)
            if [(g.slots, g.components) for g in own.groups] != [(g.slots, g.components) for g in analysis.groups]:
                raise StructuredPruningError("the channel analysis of a copy of the model differs from the original's")
            removed = set(_weakest(group, count, scores))
            remove_components(copy, own, removed)
            pruned = jit.reload(copy)
            if config.reconstruct:
                reconstruct(model, pruned, pruned_consumers(own, removed), sample, config.reconstruction_ridge)
        loss = 10 ** (-compare_outputs(reference, run_model(pruned, sample)).sqnr_db / 10)  # worst output's noise over signal
        watch.beat()  # one of many measurements (groups x levels): the step running them is alive
        return loss

    if config.amount_of == "macs":
        with jit.quiet_torch():
            cost = CostModel(model, analysis, calibration.head(SHAPE_PROBE_SAMPLES).inputs).macs
    else:
        def cost(kept_share: dict[ChannelGroup, float]) -> float:
            return sum(len(group.components) * kept_share.get(group, 1.0) for group in prunable)
    round_to = {group: _units(analysis, group, config.round_to) for group in prunable}
    key = fingerprint(model, sample, scores, config.model_dump_json(exclude={"amount", "amount_of", "round_to"}))
    return allocate(prunable, config.amount, round_to, cost, remembered(key, loss_when_removed))


def _scores(model: jit.ScriptModule, analysis: ChannelAnalysis, calibration: Batch, config: PruneStructuredConfig) -> dict[int, float]:
    if config.importance == "activation":
        with jit.quiet_torch():
            return activation_scores(model, analysis, calibration)
    return magnitude_scores(model, analysis, config.importance)


def _keep_counts(analysis: ChannelAnalysis, scores: dict[int, float], config: PruneStructuredConfig) -> dict[ChannelGroup, int]:
    """How many components each prunable group keeps, rounded up to a multiple of `round_to` channels."""
    prunable = [group for group in analysis.groups if group.pinned_reason is None]
    if config.scope == "layer":
        targets = {group: len(group.components) - math.floor(config.amount * len(group.components)) for group in prunable}
    else:
        ranked = sorted(((scores.get(c, 0.0), index) for index, group in enumerate(prunable) for c in group.components))
        targets = {group: len(group.components) for group in prunable}
        for _, index in ranked[: math.floor(config.amount * len(ranked))]:
            targets[prunable[index]] -= 1
    return {
        group: _rounded(len(group.components), targets[group], _units(analysis, group, config.round_to)) for group in prunable
    }


def _units(analysis: ChannelAnalysis, group: ChannelGroup, round_to: int) -> int:
    """`round_to` channels in units of the group's components."""
    return max(1, round_to // _width(analysis, group))


def _width(analysis: ChannelAnalysis, group: ChannelGroup) -> int:
    """Channels per component: 1 for a conv's channel or a neuron, the head width for an attention head."""
    members = set(group.components)
    return max(1, min(sum(analysis.component(e) in members for e in analysis.slots[slot]) // len(members) for slot in group.slots))


def _rounded(total: int, target: int, round_to: int) -> int:
    keep = max(round_to, math.ceil(target / round_to) * round_to)
    return min(total, max(1, keep))


def _check_outputs(model: jit.ScriptModule, batch: Batch, expected: list[tuple[str, tuple[int, ...]]]) -> None:
    try:
        got = [(name, tuple(t.shape)) for name, t in run_model(model, batch)]
    except Exception as exc:
        raise StructuredPruningError(f"the pruned model fails on the calibration batch: {exc}") from exc
    if got != expected:
        raise StructuredPruningError(f"pruning changed the outputs from {expected} to {got}")


def _parameter_count(model: jit.ScriptModule) -> int:
    return sum(p.numel() for p in model.parameters())


def _details(
    analysis: ChannelAnalysis, keep_counts: dict[ChannelGroup, int], before: int, after: int, allocation: Allocation | None
) -> dict:
    pruned, skipped = [], []
    for group in analysis.groups:
        total = len(group.components)
        measured = {}
        if allocation is not None and group in allocation.sensitivity:
            measured = {"sensitivity": [{"removed": round(r, 3), "loss": round(loss, 5)} for r, loss in allocation.sensitivity[group][1:]]}
        if group.pinned_reason is not None:
            skipped.append({"modules": group.modules, "channels": total, "reason": group.pinned_reason})
        elif keep_counts[group] == total:
            reason = "its measured loss was too high for its cost" if allocation else "rounding to the channel multiple keeps every channel"
            skipped.append({"modules": group.modules, "channels": total, "reason": reason} | measured)
        else:
            kept, width = keep_counts[group], _width(analysis, group)
            unit = {"channels_per_unit": width} if width > 1 else {}  # attention heads: channels and kept count heads
            pruned.append({"modules": group.modules, "channels": total, "kept": kept, "removed_share": round(1 - kept / total, 4)} | unit | measured)
    found = {
        "parameters_before": before,
        "parameters_after": after,
        "parameter_ratio": round(after / before, 4) if before else 1.0,
        "pruned_groups": pruned,
        "skipped_groups": skipped,
    }
    if allocation is not None:
        found["allocation"] = {"cost_before": allocation.cost_before, "cost_after": allocation.cost_after,
                               "removed_share": round(1 - allocation.cost_after / allocation.cost_before, 4)}
    return found
