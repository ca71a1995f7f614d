"""TorchScript graph access for the channel analysis: one flat graph, attribute names, probed tensors.

The analysis reads an inlined copy of forward (every submodule call expanded), so that one walk
sees every op. Shape constants it must rewrite (conv `groups`, view sizes, layer_norm shapes) are
then located in the model's own, un-inlined code: the model keeps its module structure, which later
passes rely on (quantize_jit folds conv+BN and applies per-module qconfigs by module calls).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..jit import ScriptModule, quiet_torch

Graph = torch._C.Graph
Node = torch._C.Node
Value = torch._C.Value


@dataclass(frozen=True)
class Origin:
    """Where a node of the inlined copy lives in the model's own code."""

    graph: Graph
    node: Node
    shared: bool  # the same code runs for several modules (or call sites): rewriting it hits all


def inlined_forward(model: ScriptModule) -> tuple[Graph, dict[int, Origin]]:
    """A copy of forward with every call inlined, and the origin of each top-level node that has outputs."""
    inlined = model.graph.copy()
    with quiet_torch():
        torch._C._jit_pass_inline(inlined)
    try:
        originals = [item for item in _expanded_nodes(model, model.graph, "forward") if _is_op(item[2])]
    except LookupError:
        return inlined, {}
    flat = [node for node in inlined.nodes() if _is_op(node)]
    if [n.kind() for n in flat] != [node.kind() for _, _, node in originals]:
        return inlined, {}
    uses = Counter(code_key for code_key, _, _ in originals)
    return inlined, {
        _key(copy): Origin(graph, node, uses[code_key] > 1)
        for copy, (code_key, graph, node) in zip(flat, originals)
        if _key(copy) is not None
    }


def _is_op(node: Node) -> bool:
    # Inlining drops module lookups and may move constants; every other node keeps its order.
    return node.kind() not in ("prim::GetAttr", "prim::Constant")


def origin_of(origins: dict[int, Origin], node: Node) -> Origin | None:
    key = _key(node)
    return None if key is None else origins.get(key)


def _key(node: Node) -> int | None:
    return node.outputsAt(0).unique() if node.outputsSize() else None


def _expanded_nodes(module, graph: Graph, method: str) -> Iterator[tuple[tuple, Graph, Node]]:
    """Top-level nodes in the order `_jit_pass_inline` lays them out, with a key naming their code."""
    code = module._c._type().qualified_name(), method
    for node in graph.nodes():
        if node.kind() == "prim::CallMethod":
            callee = _module_at(module, node.inputsAt(0))
            name = node.s("name")
            yield from _expanded_nodes(callee, getattr(callee, name).graph, name)
        elif node.kind() == "prim::CallFunction":
            raise LookupError("calls a free function, whose code is not reachable from Python")
        else:
            yield (*code, _key(node)), graph, node


def _module_at(module, value: Value):
    names = _attribute_names(value)
    if names is None:
        raise LookupError("calls a module that is not an attribute")
    for name in names:
        module = getattr(module, name)
    return module


def _attribute_names(value: Value) -> list[str] | None:
    """['layer1', '0', 'conv1'] when `value` is read by a prim::GetAttr chain from self, else None."""
    names = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().input()
    if value.node().kind() != "prim::Param" or value.offset() != 0:
        return None
    return list(reversed(names))


def is_tensor(value: Value) -> bool:
    return value.type().kind() == "TensorType"


def tensor_values(graph: Graph) -> list[Value]:
    """Tensor values computed in the top block, in graph order (a graph copy lists them identically)."""
    values = [v for v in graph.inputs() if is_tensor(v)]
    for node in graph.nodes():
        values.extend(v for v in node.outputs() if is_tensor(v))
    return values


def probe(
    model: ScriptModule, graph: Graph, values_of: Sequence[int], inputs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Run `graph` (a forward of `model`) and return the tensors of the chosen top-block values
    (positions in `tensor_values`).

    Runs a copy of the graph whose output is the list of those values: no hooks exist inside
    TorchScript, and the copy leaves `graph` untouched.
    """
    graph = graph.copy()
    chosen = [tensor_values(graph)[i] for i in values_of]
    collect = graph.create("prim::ListConstruct", chosen)
    collect.output().setType(torch._C.ListType.ofTensors())
    collect.insertBefore(graph.return_node())
    graph.eraseOutput(0)
    graph.registerOutput(collect.output())
    function = torch._C._create_function_from_graph("probe_forward", graph)
    with torch.no_grad(), quiet_torch():
        return list(function(model._c, *inputs))


def attribute_path(value: Value) -> str | None:
    """'layer1.0.conv1.weight' when `value` is read by a prim::GetAttr chain from self, else None."""
    names = _attribute_names(value)
    return ".".join(names) if names else None


def constant(value: Value):
    """The Python value of a constant (or a list built from constants), None when computed at run time."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        items = [constant(item) for item in node.inputs()]
        return None if any(item is None for item in items) else items
    if node.kind() != "prim::Constant":
        return None
    return value.toIValue()


def nested_nodes(node: Node) -> Iterator[Node]:
    for block in node.blocks():
        for inner in block.nodes():
            yield inner
            yield from nested_nodes(inner)


def replace_constant_input(graph: Graph, node: Node, index: int, new_value) -> None:
    """Make input `index` of `node` a new constant (leaves other users of the old constant alone)."""
    with graph.insert_point_guard(node):
        replacement = graph.insertConstant(new_value)
    node.replaceInput(index, replacement)
