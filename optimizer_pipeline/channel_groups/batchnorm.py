"""Re-estimating BatchNorm running statistics on the calibration batch after channels were removed.

Removing a layer's input channels shifts the statistics of everything after it, so the BatchNorm
layers downstream normalize with a mean and variance that no longer hold. Re-estimating them is free
(no training) and recovers much of the loss.

Works on the graph, not on the modules: a traced model baked `training=False` into its BatchNorm
calls, so flipping `module.training` would do nothing there. A copy of the inlined forward is run
with every BatchNorm normalizing by the statistics of the current chunk (what train mode does, so
downstream layers see normalized inputs), and the input of each BatchNorm is read out; the new
running statistics are the averages over the whole batch (PyTorch's momentum=None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..intake.calibration import Batch
from ..jit import ScriptModule
from . import graph as g

# aten::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
RUNNING_MEAN, RUNNING_VAR, TRAINING, MOMENTUM = 3, 4, 5, 6
# Batch statistics of a chunk this size are close to the population's.
CHUNK = 128


@dataclass(frozen=True)
class _Norm:
    position: int  # of its input among the graph's tensor values
    mean_path: str
    var_path: str


class _Moments:
    """Per-channel sum and sum of squares (float64) of a BatchNorm's inputs, over every chunk."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().double().movedim(1, 0).reshape(x.shape[1], -1)
        self.count += rows.shape[1]
        self.total = self.total + rows.sum(1)
        self.squares = self.squares + rows.pow(2).sum(1)

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        # Unbiased, as BatchNorm stores it.
        variance = (self.squares - self.count * mean.pow(2)) / max(self.count - 1, 1)
        return mean, variance.clamp_min(0)


def recalibrate_batchnorm(model: ScriptModule, batch: Batch) -> list[str]:
    """Overwrite every BatchNorm's running mean and variance with its input statistics on `batch`.

    Returns the dotted names of the BatchNorm modules updated. Only BatchNorms that read their
    statistics straight from module buffers are touched.
    """
    graph, _ = g.inlined_forward(model)
    norms = _normalize_by_batch(graph)
    if not norms:
        return []
    moments = [_Moments() for _ in norms]
    # Equal chunks: a last chunk of one sample cannot give batch statistics to a BatchNorm1d.
    for chunk in batch.chunks(math.ceil(len(batch) / math.ceil(len(batch) / CHUNK))):
        probed = g.probe(model, graph, [norm.position for norm in norms], chunk.inputs)
        for moment, tensor in zip(moments, probed):
            moment.add(tensor)
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for norm, moment in zip(norms, moments):
            mean, variance = moment.mean_and_variance()
            buffers[norm.mean_path].copy_(mean)
            buffers[norm.var_path].copy_(variance)
    return [norm.mean_path.rpartition(".")[0] for norm in norms]


def _normalize_by_batch(graph: g.Graph) -> list[_Norm]:
    """Make every top-level BatchNorm of `graph` (an inlined copy) use batch statistics; list them.

    Momentum 0 keeps the in-place running-statistics update of train mode from changing the model
    while it is probed.
    """
    position = {value.unique(): index for index, value in enumerate(g.tensor_values(graph))}
    norms = []
    for node in list(graph.nodes()):
        if node.kind() != "aten::batch_norm":
            continue
        mean_path = g.attribute_path(node.inputsAt(RUNNING_MEAN))
        var_path = g.attribute_path(node.inputsAt(RUNNING_VAR))
        if mean_path is None or var_path is None:
            continue
        g.replace_constant_input(graph, node, TRAINING, True)
        g.replace_constant_input(graph, node, MOMENTUM, 0.0)
        norms.append(_Norm(position[node.inputsAt(0).unique()], mean_path, var_path))
    return norms
