"""Remove chosen channel components from a ScriptModule: slice parameters, rewrite baked shapes.

Parameter replacement by a tensor of another shape works on ScriptModules (shared NOTES); the forward
code of Linear, Conv and norms reads shapes from the tensors, except for the constants the analysis
listed as ShapeRewrites (already located in the model's own code). The caller must reload the
module afterwards: a ScriptModule caches its execution plan, so a rewritten graph only takes effect
in a fresh copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Set

import torch
from torch import nn

from ..jit import ScriptModule
from . import graph as g
from .analysis import ChannelAnalysis


def remove_components(model: ScriptModule, analysis: ChannelAnalysis, removed: Set[int]) -> None:
    """Slice every parameter/buffer dimension and rewrite every shape constant touched by `removed`."""
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for (path, dim), elements in analysis.slots.items():
        keep = kept_indices(analysis, removed, path, dim)
        if len(keep) < len(elements):
            cuts[path].append((dim, keep))
    for path, path_cuts in cuts.items():
        _replace_attribute(model, path, path_cuts)
    for rewrite in analysis.rewrites:
        kept = sum(analysis.component(e) not in removed for e in rewrite.elements)
        if kept == len(rewrite.elements):
            continue
        if rewrite.list_position is None:
            g.replace_constant_input(rewrite.graph, rewrite.node, rewrite.input_index, kept)
        else:
            entries = list(g.constant(rewrite.node.inputsAt(rewrite.input_index)))
            entries[rewrite.list_position] = kept
            g.replace_constant_input(rewrite.graph, rewrite.node, rewrite.input_index, entries)


def kept_indices(analysis: ChannelAnalysis, removed: Set[int], path: str, dim: int) -> torch.Tensor:
    """Indices along dimension `dim` of the parameter at `path` that survive removing `removed`."""
    elements = analysis.slots[(path, dim)]
    return torch.tensor([i for i, e in enumerate(elements) if analysis.component(e) not in removed], dtype=torch.long)


def _replace_attribute(model: ScriptModule, path: str, cuts: list[tuple[int, torch.Tensor]]) -> None:
    new = _attribute(model, path).detach()
    for dim, keep in cuts:
        new = new.index_select(dim, keep)
    set_tensor_attribute(model, path, new.clone())  # a slice would keep (and save) the whole old storage


def set_tensor_attribute(model: ScriptModule, path: str, tensor: torch.Tensor) -> None:
    """Replace the parameter or buffer at dotted `path`, keeping its kind (and requires_grad)."""
    owner_path, _, name = path.rpartition(".")
    owner = _attribute(model, owner_path)
    old = getattr(owner, name)
    if name in dict(owner.named_parameters(recurse=False)):
        tensor = nn.Parameter(tensor, requires_grad=old.requires_grad)
    setattr(owner, name, tensor)


def _attribute(model: ScriptModule, path: str):
    found = model
    for part in path.split(".") if path else []:
        found = getattr(found, part)
    return found
