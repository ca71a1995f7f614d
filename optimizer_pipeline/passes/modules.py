"""Finding layers inside a ScriptModule by their original class name (Conv2d, Linear, ...)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

WEIGHTED_LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def original_name(module: torch.nn.Module) -> str:
    return getattr(module, "original_name", type(module).__name__)


def weighted_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(dotted name, module) for every Linear / Conv layer that holds a float weight."""
    for name, module in model.named_modules():
        if original_name(module) in WEIGHTED_LAYER_TYPES and hasattr(module, "weight"):
            weight = module.weight
            if isinstance(weight, torch.Tensor) and weight.is_floating_point():
                yield name, module


def layer_types(model: torch.nn.Module) -> set[str]:
    return {original_name(module) for _, module in model.named_modules()}
