"""Refit the layers that read pruned channels, so their outputs match the original's (least squares).

Removing input channels of a conv or linear layer leaves its remaining weights tuned for inputs that
are gone. Channel pruning with reconstruction (He et al. 2017) and ThiNet refit those weights on a
few hundred samples: with X the pruned model's input to the layer (conv inputs unfolded into patches)
and Y the original layer's output on the same samples, solve

    min_W ||X W - Y||^2 + lam ||W - W0||^2

where W0 is the sliced original weight. Pulling towards W0 rather than towards zero keeps the fit
safe when samples are few compared with the layer's inputs. Only forward passes are needed, and
X^T X and X^T Y are accumulated chunk by chunk, so memory does not grow with the batch.

Layers are refitted in graph order, each on the inputs the already refitted layers before it give,
so errors do not pile up along the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..intake.calibration import Batch
from ..jit import ScriptModule
from ..measure import watch
from . import graph as g
from .analysis import ChannelAnalysis
from .apply import kept_indices

# Rows of X (samples x output positions) used per layer: enough for thousands of unknowns, and it
# bounds the cost of a large feature map.
MAX_ROWS = 65536
CHUNK = 32
# aten::_convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)
# aten::conv2d(input, weight, bias, stride, padding, dilation, groups)
CONVOLUTIONS = {"aten::_convolution": 8, "aten::conv2d": 6}


@dataclass(frozen=True)
class LayerCall:
    """One call of a conv2d / linear layer in an inlined forward."""

    weight_path: str
    bias_path: str | None
    input_position: int
    output_position: int
    conv: dict[str, list[int]] | None  # stride, padding, dilation; None for a linear layer
    refittable: bool  # a linear layer, or a conv2d that is neither grouped nor transposed


@dataclass(frozen=True)
class Refit:
    """What reconstruction did to one layer: output error relative to the original, before and after."""

    layer: str
    error_before: float
    error_after: float
    rows: int


def pruned_consumers(analysis: ChannelAnalysis, removed: Set[int]) -> dict[str, torch.Tensor]:
    """Weight paths of the layers that lost input channels, with the output channels each keeps."""
    found = {}
    for path, dim in analysis.slots:
        if dim == 1 and (path, 0) in analysis.slots:
            if len(kept_indices(analysis, removed, path, 1)) < len(analysis.slots[(path, 1)]):
                found[path] = kept_indices(analysis, removed, path, 0)
    return found


def reconstruct(
    original: ScriptModule, pruned: ScriptModule, layers: Mapping[str, torch.Tensor], batch: Batch, ridge: float
) -> list[Refit]:
    """Refit the weights (and bias) of each layer named by its weight path in `layers`, in place in `pruned`.

    `layers` maps a weight path to the original output channels that the pruned layer still has.
    Layers that are not a plain (ungrouped, untransposed) conv2d or linear, or that run more than
    once per forward, are left as they are.
    """
    original_graph, pruned_graph = g.inlined_forward(original)[0], g.inlined_forward(pruned)[0]
    in_original, in_pruned = layer_calls(original_graph), layer_calls(pruned_graph)
    order = [path for path, call in in_pruned.items() if call.refittable and path in layers and path in in_original]
    refits = []
    generator = torch.Generator().manual_seed(0)
    for path in order:
        target_layer, layer = in_original[path], in_pruned[path]
        kernel = tuple(dict(pruned.named_parameters())[path].shape[2:])
        normal = _NormalEquations(with_bias=layer.bias_path is not None)
        for chunk in batch.chunks(CHUNK):
            (y,) = g.probe(original, original_graph, [target_layer.output_position], chunk.inputs)
            (x,) = g.probe(pruned, pruned_graph, [layer.input_position], chunk.inputs)
            rows_x = _input_rows(x, layer, kernel)
            rows_y = _output_rows(y.index_select(_channel_dim(y, layer), layers[path]), layer)
            keep = _sample_rows(len(rows_x), MAX_ROWS * len(chunk) // len(batch), generator)
            normal.add(rows_x[keep], rows_y[keep])
        refits.append(_solve_and_set(pruned, layer, normal, ridge))
        watch.beat()  # a layer refitted: the step running this (minutes on a ResNet-18) is alive
    return refits


def layer_calls(graph: g.Graph) -> dict[str, LayerCall]:
    """Conv2d / linear calls of `graph` by weight path, in graph order; weights used twice are left out."""
    position = {value.unique(): index for index, value in enumerate(g.tensor_values(graph))}
    found: dict[str, LayerCall] = {}
    seen: set[str] = set()
    for node in graph.nodes():
        layer = _layer(node, position)
        if layer is None:
            continue
        if layer.weight_path in seen:
            found.pop(layer.weight_path, None)
        else:
            found[layer.weight_path] = layer
        seen.add(layer.weight_path)
    return found


def _layer(node: g.Node, position: dict[int, int]) -> LayerCall | None:
    kind = node.kind()
    if kind != "aten::linear" and kind not in CONVOLUTIONS:
        return None
    inputs = list(node.inputs())
    weight_path = g.attribute_path(inputs[1])
    if weight_path is None:
        return None
    conv, refittable = None, True
    if kind in CONVOLUTIONS:
        stride, padding, dilation = (g.constant(v) for v in inputs[3:6])
        if not all(isinstance(v, list) and len(v) == 2 for v in (stride, padding, dilation)):
            return None  # not a 2-D conv with constant geometry
        transposed = kind == "aten::_convolution" and g.constant(inputs[6])
        refittable = g.constant(inputs[CONVOLUTIONS[kind]]) == 1 and not transposed
        conv = {"stride": stride, "padding": padding, "dilation": dilation}
    bias_path = g.attribute_path(inputs[2]) if inputs[2].type().kind() != "NoneType" else None
    return LayerCall(weight_path, bias_path, position[inputs[0].unique()], position[node.output().unique()], conv, refittable)


def _channel_dim(output: torch.Tensor, layer: LayerCall) -> int:
    return 1 if layer.conv else output.dim() - 1


def _input_rows(x: torch.Tensor, layer: LayerCall, kernel: tuple[int, ...]) -> torch.Tensor:
    """One row per (sample, output position): the unfolded patch a conv reads there, or a linear's input."""
    if layer.conv is None:
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, kernel, layer.conv["dilation"], layer.conv["padding"], layer.conv["stride"])
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _output_rows(y: torch.Tensor, layer: LayerCall) -> torch.Tensor:
    if layer.conv is None:
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def _sample_rows(count: int, budget: int, generator: torch.Generator) -> torch.Tensor:
    if count <= budget:
        return torch.arange(count)
    return torch.randperm(count, generator=generator)[: max(budget, 1)]


class _NormalEquations:
    """X^T X, X^T Y and ||Y||^2 summed over chunks in float64; X gains a column of ones for a bias."""

    def __init__(self, with_bias: bool) -> None:
        self.with_bias = with_bias
        self.gram: torch.Tensor | float = 0.0
        self.cross: torch.Tensor | float = 0.0
        self.target_power = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.with_bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        self.gram = self.gram + (x.T @ x).double()
        self.cross = self.cross + (x.T @ y).double()
        self.target_power += float(y.double().pow(2).sum())
        self.rows += len(x)

    def relative_error(self, solution: torch.Tensor) -> float:
        """||X W - Y||^2 / ||Y||^2 without a second pass over the data."""
        residual = (solution * (self.gram @ solution)).sum() - 2 * (solution * self.cross).sum() + self.target_power
        return float(residual.clamp_min(0) / max(self.target_power, 1e-30))

    def solve(self, prior: torch.Tensor, ridge: float) -> torch.Tensor:
        """argmin ||X W - Y||^2 + lam ||W - prior||^2, lam = ridge x the mean diagonal of X^T X (bias unpenalized)."""
        size = self.gram.shape[0]
        penalty = torch.full((size,), ridge * float(self.gram.diagonal().mean()), dtype=torch.float64)
        if self.with_bias:
            penalty[-1] = 0.0
        lhs = self.gram + torch.diag(penalty)
        return torch.linalg.solve(lhs, self.cross + penalty[:, None] * prior)


def _solve_and_set(model: ScriptModule, layer: LayerCall, normal: _NormalEquations, ridge: float) -> Refit:
    parameters = dict(model.named_parameters())
    weight = parameters[layer.weight_path]
    # Columns of the solution line up with the unfolded patch: (in channel, kernel row, kernel column).
    prior = weight.detach().reshape(weight.shape[0], -1).T.double()
    if layer.bias_path is not None:
        prior = torch.cat([prior, parameters[layer.bias_path].detach().double()[None]], 0)
    error_before = normal.relative_error(prior)
    solution = normal.solve(prior, ridge)
    error_after = normal.relative_error(solution)
    with torch.no_grad():
        if layer.bias_path is not None:
            parameters[layer.bias_path].copy_(solution[-1])
            solution = solution[:-1]
        weight.copy_(solution.T.reshape(weight.shape))
    return Refit(layer.weight_path.rpartition(".")[0], error_before, error_after, normal.rows)
