"""Unstructured magnitude or random pruning: zero individual Linear/Conv weights in place.

torch.nn.utils.prune fails on ScriptModules, so masks are applied directly to the parameters
(shared NOTES). Dense kernels skip nothing, so this alone buys no speed (measured 1.0x); it is a
step towards sparse kernels or a fine-tuning plan, and the report says so.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ... import jit
from ...intake.calibration import Batch
from ...limits import Seed
from ..base import PassConfig, PassOutput, register
from ..modules import weighted_layers


class PruneUnstructuredConfig(PassConfig):
    name: Literal["prune_unstructured"] = "prune_unstructured"
    method: Literal["l1", "random"] = "l1"
    amount: float = Field(0.3, ge=0.0, lt=1.0, description="fraction of weights to zero")
    scope: Literal["layer", "global"] = Field("layer", description="per-layer quota, or one global threshold")
    seed: Seed = 0

    speed_note = "unstructured sparsity: dense CPU kernels run zeros at full cost, so expect no speed-up"


@register(PruneUnstructuredConfig)
def prune_unstructured(model: jit.ScriptModule, calibration: Batch, config: PruneUnstructuredConfig) -> PassOutput:
    layers = list(weighted_layers(model))
    if not layers:
        raise ValueError("the model has no Linear or Conv weights to prune")
    generator = torch.Generator().manual_seed(config.seed)
    scores = {name: _scores(module.weight, config.method, generator) for name, module in layers}
    threshold = _global_threshold(scores, config.amount) if config.scope == "global" else None
    sparsity = {}
    with torch.no_grad():
        for name, module in layers:
            layer_threshold = threshold if threshold is not None else _kth_smallest(scores[name], config.amount)
            mask = scores[name] > layer_threshold
            module.weight.mul_(mask)
            sparsity[name or "<root>"] = round(1.0 - float(mask.float().mean()), 4)
    total = sum(module.weight.numel() for _, module in layers)
    zeros = sum(int((module.weight == 0).sum()) for _, module in layers)
    return PassOutput(model, {"sparsity_per_layer": sparsity, "overall_sparsity": round(zeros / total, 4)})


def _scores(weight: torch.Tensor, method: str, generator: torch.Generator) -> torch.Tensor:
    if method == "l1":
        return weight.detach().abs()
    return torch.rand(weight.shape, generator=generator)


def _kth_smallest(scores: torch.Tensor, amount: float) -> float:
    count = int(round(amount * scores.numel()))
    if count == 0:
        return -1.0
    return float(scores.flatten().kthvalue(count).values)


def _global_threshold(scores: dict[str, torch.Tensor], amount: float) -> float:
    return _kth_smallest(torch.cat([s.flatten() for s in scores.values()]), amount)
