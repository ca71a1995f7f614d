"""How much each removable channel component matters, comparable across groups.

Scores are summed per component within one source (a parameter dimension, or an activation), divided
by that source's mean so that large layers do not dominate, then averaged over the component's
sources. A score near 1 is average; the lowest-scoring components are removed first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

from ..intake.calibration import Batch
from ..jit import ScriptModule
from . import graph as g
from .analysis import ChannelAnalysis


def magnitude_scores(model: ScriptModule, analysis: ChannelAnalysis, norm: str) -> dict[int, float]:
    """L1 or L2 norm of each component's weights. Buffers (running statistics) do not count."""
    parameters = dict(model.named_parameters())
    sources = []
    for (path, dim), elements in analysis.slots.items():
        if path not in parameters:
            continue
        weight = parameters[path].detach()
        rows = weight.movedim(dim, 0).reshape(weight.shape[dim], -1)
        per_index = rows.abs().sum(1) if norm == "l1" else rows.pow(2).sum(1)
        sources.append(_per_component(analysis, elements, per_index, sqrt=norm == "l2"))
    return _average_normalized(sources)


def activation_scores(model: ScriptModule, analysis: ChannelAnalysis, batch: Batch, chunk: int = 16) -> dict[int, float]:
    """Mean |activation| of each channel where it enters a layer, over the batch."""
    positions = sorted({position for position, _ in analysis.observed})
    sums: dict[int, torch.Tensor] = {}
    for part in batch.chunks(chunk):
        for position, tensor in zip(positions, g.probe(model, analysis.graph, positions, part.inputs)):
            sums[position] = sums.get(position, 0) + tensor.abs().sum(0)
    sources = []
    for position, tracked in analysis.observed:
        if tracked.dim == 0:
            continue
        # The batch dim was summed away, so the channel dim moved one place to the left.
        per_index = sums[position].movedim(tracked.dim - 1, 0).reshape(len(tracked.elements), -1).mean(1)
        sources.append(_per_component(analysis, tracked.elements, per_index, sqrt=False))
    return _average_normalized(sources)


def _per_component(analysis: ChannelAnalysis, elements: Sequence[int], per_index: torch.Tensor, sqrt: bool) -> dict[int, float]:
    totals: dict[int, float] = defaultdict(float)
    for element, value in zip(elements, per_index.tolist()):
        totals[analysis.component(element)] += value
    return {c: v**0.5 for c, v in totals.items()} if sqrt else dict(totals)


def _average_normalized(sources: Iterable[dict[int, float]]) -> dict[int, float]:
    summed: dict[int, float] = defaultdict(float)
    counted: dict[int, int] = defaultdict(int)
    for scores in sources:
        mean = sum(scores.values()) / len(scores) or 1.0
        for component, value in scores.items():
            summed[component] += value / mean
            counted[component] += 1
    return {component: summed[component] / counted[component] for component in summed}
