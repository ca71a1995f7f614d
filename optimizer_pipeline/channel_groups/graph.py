"""TorchScript graph access for the channel analysis: one flat graph, attribute names, probed tensors.

The analysis rewrites shape constants (conv `groups`, view sizes, layer_norm shapes) in the very
nodes it analysed, so it works on the model's own forward graph, inlined in place: the submodules'
code is copied into forward, which makes every node belong to exactly one call site.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..jit import ScriptModule, quiet_torch

Graph = torch._C.Graph
Node = torch._C.Node
Value = torch._C.Value


def flatten_forward(model: ScriptModule) -> Graph:
    """Inline every call in forward and fold constants, in place; returns forward's graph."""
    graph = model.graph
    with quiet_torch():
        torch._C._jit_pass_inline(graph)
        torch._C._jit_pass_constant_propagation(graph)
    return graph


def is_tensor(value: Value) -> bool:
    return value.type().kind() == "TensorType"


def tensor_values(graph: Graph) -> list[Value]:
    """Tensor values computed in the top block, in graph order (a graph copy lists them identically)."""
    values = [v for v in graph.inputs() if is_tensor(v)]
    for node in graph.nodes():
        values.extend(v for v in node.outputs() if is_tensor(v))
    return values


def probe(model: ScriptModule, values_of: Sequence[int], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run forward and return the tensors of the chosen top-block values (positions in `tensor_values`).

    Runs a copy of the graph whose output is the list of those values: no hooks exist inside
    TorchScript, and the copy leaves the model's own graph untouched.
    """
    graph = model.graph.copy()
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
    names = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().input()
    if not names or value.node().kind() != "prim::Param" or value.offset() != 0:
        return None
    return ".".join(reversed(names))


def constant(value: Value):
    """The Python value of a prim::Constant, or None when `value` is computed at run time."""
    if value.node().kind() != "prim::Constant":
        return None
    return value.toIValue()


def nested_nodes(node: Node) -> Iterator[Node]:
    for block in node.blocks():
        for inner in block.nodes():
            yield inner
            yield from nested_nodes(inner)


def replace_constant_input(node: Node, index: int, new_value) -> None:
    """Make input `index` of `node` a new constant (leaves other users of the old constant alone)."""
    graph = node.owningGraph()
    with graph.insert_point_guard(node):
        replacement = graph.insertConstant(new_value)
    node.replaceInput(index, replacement)
