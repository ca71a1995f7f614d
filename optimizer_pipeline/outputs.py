"""Model outputs as a flat list of named tensors, whatever structure forward returns."""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidModelError

NamedOutputs = list[tuple[str, torch.Tensor]]


def flatten_outputs(value: Any, prefix: str = "output") -> NamedOutputs:
    """Tensor -> [("output", t)]; tuple/list -> output_0, output_1...; dict -> its keys (nested: dotted)."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        flat: NamedOutputs = []
        for position, item in enumerate(value):
            flat.extend(flatten_outputs(item, f"{prefix}_{position}"))
        return flat
    if isinstance(value, dict):
        flat = []
        for key, item in value.items():
            name = str(key) if prefix == "output" else f"{prefix}.{key}"
            flat.extend(flatten_outputs(item, name))
        return flat
    raise InvalidModelError(
        f"forward returned a {type(value).__name__} at {prefix!r}; optiserve serves models that return a Tensor, "
        f"a tuple/list of Tensors or a dict of Tensors"
    )


def is_class_scores(tensor: torch.Tensor) -> bool:
    """[N, C] floating scores with C > 1: top-1 agreement and accuracy make sense on these."""
    return tensor.dim() == 2 and tensor.shape[1] > 1 and tensor.is_floating_point()


def concat_outputs(parts: list[NamedOutputs]) -> NamedOutputs:
    """Join per-chunk outputs along the batch dimension."""
    names = [name for name, _ in parts[0]]
    return [(name, torch.cat([part[i][1] for part in parts])) for i, name in enumerate(names)]
