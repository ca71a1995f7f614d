"""Multiply-accumulates of a model's conv and linear layers, as a function of each group's kept share.

A layer's MACs per sample are its output size times the weights each output reads. Removing
channels scales them by the kept share of each sliced weight dimension (out and in channels); a
dimension may hold channels of several groups (the input of a layer after a concat). Depthwise convs
have one sliced dimension, so they scale once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..jit import ScriptModule
from . import graph as g
from .analysis import ChannelAnalysis, ChannelGroup
from .reconstruction import layer_calls


@dataclass(frozen=True)
class _LayerCost:
    macs: float
    # Per sliced weight dimension: how many of its indices belong to each group.
    dims: tuple[Counter, ...]


class CostModel:
    """MACs per sample of the whole model for any share of channels kept in each group."""

    def __init__(self, model: ScriptModule, analysis: ChannelAnalysis, sample_inputs: Sequence[torch.Tensor]) -> None:
        group_of = {component: group for group in analysis.groups for component in group.components}
        self._layers = []
        for path, macs in _layer_macs(model, sample_inputs).items():
            dims = []
            for dim in (0, 1):
                elements = analysis.slots.get((path, dim), [])
                dims.append(Counter(group_of.get(analysis.component(e)) for e in elements))
            self._layers.append(_LayerCost(macs, tuple(d for d in dims if d)))

    def macs(self, kept_share: Mapping[ChannelGroup, float]) -> float:
        """Total MACs when each group keeps `kept_share[group]` of its channels (1.0 when absent)."""
        return sum(
            layer.macs
            * math.prod(sum(count * kept_share.get(group, 1.0) for group, count in dim.items()) / dim.total() for dim in layer.dims)
            for layer in self._layers
        )


def _layer_macs(model: ScriptModule, sample_inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """MACs per sample of each conv / linear layer, by weight path."""
    graph, _ = g.inlined_forward(model)
    layers = layer_calls(graph)
    outputs = g.probe(model, graph, [layer.output_position for layer in layers.values()], sample_inputs)
    weights = dict(model.named_parameters())
    return {
        path: output.numel() / output.shape[0] / weights[path].shape[0] * weights[path].numel()
        for path, output in zip(layers, outputs)
    }
