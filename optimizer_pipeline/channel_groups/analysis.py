"""Walk a TorchScript forward graph and find which channels must be removed together.

`analyse(model, sample_inputs)` returns the coupled channel groups: each group lists the parameter
and buffer dimensions it slices and, when something the analysis does not understand touches it, why
it must stay whole. Op-specific rules live in `handlers`; this module holds the bookkeeping they share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..jit import ScriptModule, exported_method_names
from . import graph as g
from .elements import ChannelElements
from .registry import HANDLERS

# Ops that ask a tensor nothing that depends on its channel count: channels may be removed under them.
SHAPE_QUERIES = frozenset(
    {"aten::dim", "aten::len", "prim::dtype", "prim::device", "aten::is_floating_point", "prim::is_cuda",
     "aten::__isnot__", "aten::__is__"}
)
# Inside control flow, size() only appears in the input checks of library modules (e.g. BatchNorm's
# "more than 1 value per channel"); elsewhere the `size` handler decides.
CHECKS_IN_BLOCKS = SHAPE_QUERIES | {"aten::size"}
CONTAINERS = frozenset({"prim::ListConstruct", "prim::TupleConstruct", "prim::DictConstruct"})


class NotUnderstood(Exception):
    """Raised by a handler: the op uses its tracked inputs in a way channel pruning cannot follow."""


@dataclass
class Tracked:
    """An activation whose dimension `dim` holds known channels, one element per index."""

    dim: int
    elements: list[int]


@dataclass
class ShapeRewrite:
    """An int baked into the graph that must become the number of surviving `elements`.

    `list_position` is None when input `input_index` of `node` is an int, else the position inside
    an int-list constant.
    """

    node: g.Node
    input_index: int
    list_position: int | None
    elements: list[int]
    graph: g.Graph | None = None  # the model's own graph holding `node`, once located


@dataclass(eq=False)  # compared and hashed by identity: groups key the pruning decisions
class ChannelGroup:
    """Channels that share the same set of sliced dimensions, e.g. one conv's outputs with their BN."""

    slots: tuple[tuple[str, int], ...]
    components: list[int]
    pinned_reason: str | None = None

    @property
    def modules(self) -> list[str]:
        return sorted({path.rpartition(".")[0] or path for path, _ in self.slots})

    @property
    def name(self) -> str:
        return "+".join(self.modules)


@dataclass
class ChannelAnalysis:
    groups: list[ChannelGroup]
    slots: dict[tuple[str, int], list[int]]
    rewrites: list[ShapeRewrite]
    elements: ChannelElements
    # Tensors that enter a layer which owns channel slots, for activation-based importance.
    observed: list[tuple[int, Tracked]] = field(default_factory=list)
    # The inlined copy of forward that `observed` positions refer to.
    graph: g.Graph | None = None
    whole_model_reason: str | None = None

    def component(self, element: int) -> int:
        return self.elements.find(element)


class GraphWalk:
    """State shared by the op handlers while one graph is walked in order."""

    def __init__(self, model: ScriptModule, sample_inputs: Sequence[torch.Tensor]) -> None:
        self.model = model
        self.graph, self.origins = g.inlined_forward(model)
        self.elements = ChannelElements()
        self.tracked: dict[int, Tracked] = {}
        self.slots: dict[tuple[str, int], list[int]] = {}
        self.rewrites: list[ShapeRewrite] = []
        self.observed: list[tuple[int, Tracked]] = []
        self.attributes = dict(model.named_parameters()) | dict(model.named_buffers())
        values = g.tensor_values(self.graph)
        self.position = {v.unique(): i for i, v in enumerate(values)}
        probed = g.probe(model, self.graph, range(len(values)), sample_inputs)
        self.shapes = {v.unique(): tuple(t.shape) for v, t in zip(values, probed)}

    # -- reading the graph --------------------------------------------------------------------
    def shape(self, value: g.Value) -> tuple[int, ...]:
        if value.unique() not in self.shapes:
            raise NotUnderstood("the shape of an operand is unknown")
        return self.shapes[value.unique()]

    def track(self, value: g.Value) -> Tracked | None:
        return self.tracked.get(value.unique())

    def deep_inputs(self, node: g.Node) -> list[g.Value]:
        """The node's inputs, looking through list/tuple constructions (e.g. cat's list, a tuple output)."""
        found = []
        for value in node.inputs():
            if value.node().kind() in CONTAINERS:
                found.extend(self.deep_inputs(value.node()))
            else:
                found.append(value)
        return found

    # -- recording what the graph does ---------------------------------------------------------
    def set_tracked(self, value: g.Value, dim: int, elements: list[int]) -> None:
        if self.shape(value)[dim] != len(elements):
            self.elements.pin(elements, f"internal check: {value.node().kind()} changed the channel count")
            return
        self.tracked[value.unique()] = Tracked(dim, elements)

    def slot(self, value: g.Value, dim: int) -> list[int] | None:
        """Elements of dimension `dim` of the parameter/buffer read by `value` (None if not one)."""
        path = g.attribute_path(value)
        if path is None or path not in self.attributes:
            return None
        key = (path, dim)
        if key not in self.slots:
            self.slots[key] = self.elements.fresh(self.attributes[path].shape[dim])
        return self.slots[key]

    def couple_slot(self, value: g.Value, dim: int, elements: list[int]) -> None:
        """`value` is a parameter whose dimension `dim` is indexed by these channels."""
        slot = self.slot(value, dim)
        if slot is None:
            raise NotUnderstood("it combines them with a tensor whose channels come from no layer (e.g. a model input)")
        self.elements.unify(slot, elements)

    def observe(self, value: g.Value, tracked: Tracked) -> None:
        self.observed.append((self.position[value.unique()], tracked))

    def pin_values(self, values: Sequence[g.Value], reason: str) -> None:
        for value in values:
            tracked = self.track(value)
            if tracked is not None:
                self.elements.pin(tracked.elements, reason)

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.nodes():
            kind = node.kind()
            if any(True for _ in node.blocks()):
                self._pin_captured(node)
                self.pin_values(self.deep_inputs(node), f"{kind} (control flow) uses it")
                continue
            handler = HANDLERS.get(kind)
            tracked_inputs = [v for v in self.deep_inputs(node) if self.track(v) is not None]
            if handler is None:
                if tracked_inputs and kind not in SHAPE_QUERIES and kind not in CONTAINERS:
                    self.pin_values(tracked_inputs, f"{kind} is not understood")
                continue
            try:
                handler(self, node)
            except NotUnderstood as exc:
                self.pin_values(tracked_inputs, f"{kind}: {exc}")
                for output in node.outputs():
                    self.tracked.pop(output.unique(), None)
        self.pin_values(self.deep_inputs(self.graph.return_node()), "it is a model output")
        self._locate_rewrites()

    def _locate_rewrites(self) -> None:
        """Point each shape rewrite at the model's own code, or keep its channels if that is not safe."""
        located = []
        for rewrite in self.rewrites:
            origin = g.origin_of(self.origins, rewrite.node)
            if origin is None or origin.shared:
                where = "could not be located" if origin is None else "sits in code shared by several modules"
                self.elements.pin(rewrite.elements, f"a shape constant of {rewrite.node.kind()} {where}")
                continue
            located.append(ShapeRewrite(origin.node, rewrite.input_index, rewrite.list_position, rewrite.elements, origin.graph))
        self.rewrites = located

    def _pin_captured(self, node: g.Node) -> None:
        for inner in g.nested_nodes(node):
            if inner.kind() not in CHECKS_IN_BLOCKS:
                self.pin_values(list(inner.inputs()), f"{inner.kind()} inside {node.kind()} uses it")


def analyse(model: ScriptModule, sample_inputs: Sequence[torch.Tensor], protect: Sequence[str] = ()) -> ChannelAnalysis:
    """Find the coupled channel groups of `model` (its forward is inlined in place).

    `sample_inputs` are run once to learn every activation's shape; give at least 2 samples so the
    batch dimension cannot be mistaken for a channel count. Modules named in `protect` (and their
    children) keep all their channels.
    """
    walk = GraphWalk(model, sample_inputs)
    if exported_method_names(model):
        reason = f"the model exports methods besides forward ({', '.join(exported_method_names(model))})"
        return ChannelAnalysis([], {}, [], walk.elements, whole_model_reason=reason)
    walk.run()
    for (path, _), elements in walk.slots.items():
        if any(path == name or path.startswith(name + ".") for name in protect):
            walk.elements.pin(elements, f"{path.rpartition('.')[0]} is protected")
    return ChannelAnalysis(_group(walk), walk.slots, walk.rewrites, walk.elements, walk.observed, walk.graph)


def _group(walk: GraphWalk) -> list[ChannelGroup]:
    slots_of: dict[int, set[tuple[str, int]]] = defaultdict(set)
    for key, elements in walk.slots.items():
        for element in elements:
            slots_of[walk.elements.find(element)].add(key)
    by_signature: dict[tuple[tuple[str, int], ...], list[int]] = defaultdict(list)
    for component, keys in slots_of.items():
        by_signature[tuple(sorted(keys))].append(component)
    groups = []
    for signature, components in by_signature.items():
        reasons = [walk.elements.pin_reason(c) for c in components]
        pinned = next((r for r in reasons if r is not None), None)
        groups.append(ChannelGroup(signature, sorted(components), pinned))
    return sorted(groups, key=lambda group: group.slots)
