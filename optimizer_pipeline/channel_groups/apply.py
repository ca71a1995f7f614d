"""Remove chosen channel components from a ScriptModule: slice parameters, rewrite baked shapes.

Parameter replacement by a tensor of another shape works on ScriptModules (shared NOTES); the forward
code of Linear, Conv and norms reads shapes from the tensors, except for the constants the analysis
listed as ShapeRewrites. The caller must reload the module afterwards: a ScriptModule caches its
execution plan, so a rewritten graph only takes effect in a fresh copy.
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
        keep = [i for i, e in enumerate(elements) if analysis.component(e) not in removed]
        if len(keep) < len(elements):
            cuts[path].append((dim, torch.tensor(keep, dtype=torch.long)))
    for path, path_cuts in cuts.items():
        _replace_attribute(model, path, path_cuts)
    for rewrite in analysis.rewrites:
        kept = sum(analysis.component(e) not in removed for e in rewrite.elements)
        if kept == len(rewrite.elements):
            continue
        if rewrite.list_position is None:
            g.replace_constant_input(rewrite.node, rewrite.input_index, kept)
        else:
            entries = list(g.constant(rewrite.node.inputsAt(rewrite.input_index)))
            entries[rewrite.list_position] = kept
            g.replace_constant_input(rewrite.node, rewrite.input_index, entries)


def _replace_attribute(model: ScriptModule, path: str, cuts: list[tuple[int, torch.Tensor]]) -> None:
    owner_path, _, name = path.rpartition(".")
    owner = model
    for part in owner_path.split(".") if owner_path else []:
        owner = getattr(owner, part)
    old = getattr(owner, name)
    new = old.detach()
    for dim, keep in cuts:
        new = new.index_select(dim, keep)
    new = new.clone()  # a slice would keep (and save) the whole old storage
    is_parameter = name in dict(owner.named_parameters(recurse=False))
    setattr(owner, name, nn.Parameter(new, requires_grad=old.requires_grad) if is_parameter else new)
