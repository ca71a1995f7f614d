"""Where TorchScript graph-mode dynamic int8 breaks on scripted control flow, found before it runs.

`quantize_dynamic_jit` quantizes a Linear's input at run time (choose_qparams, quantize, dequantize).
When that input is the result of a `prim::If`, torch's InsertQuantDeQuant pushes the
quantize into each branch but leaves the `_choose_qparams_per_tensor` of the result *before* the
`if`, a use of the value ahead of its definition. The graph is invalid from then on, and the pass
fails later, in quant_finalize's Graph::copy, with "encountered a use of a value h.2 not in scope"
(torch 2.13). Nothing about the model is wrong: e.g.

    if x.sum() > 0: h = self.a(x)
    else:           h = self.b(x)
    return self.head(h)        # head's input is the if's result

The Linears inside the branches quantize fine; only a Linear fed the branch result directly does not
(one op in between, e.g. a relu, is enough to avoid it). So those modules are found here and kept in
float, and a model where that is impossible (a functional linear in the top module's own forward) is
refused with that reason before torch is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# A loop's result does not trip it (checked: a Linear after a scripted for loop quantizes).
BRANCH_NODES = ("prim::If",)


@dataclass
class BranchFedLinears:
    """Module paths whose Linear takes a branch result as input (kept in float), and the reason the
    model cannot be quantized dynamically at all (None when keeping those in float is enough)."""

    modules: list[str] = field(default_factory=list)
    impossible: str | None = None


def branch_fed_linears(model: torch.jit.ScriptModule) -> BranchFedLinears:
    found = BranchFedLinears()
    try:
        _visit(model, "", model.graph, set(), found)
    except (RuntimeError, AttributeError, TypeError):
        # A graph this walk does not know how to read: quantize as before rather than fail a model
        # that may well have no such `if`.
        return BranchFedLinears()
    if "" in found.modules:
        found.modules.remove("")
        found.impossible = (
            "TorchScript dynamic int8 cannot quantize this model: its forward applies a linear to the result of an "
            "`if` directly, which torch's graph-mode dynamic quantization places out of scope (torch bug: "
            "'Graph::copy() encountered a use of a value ... not in scope'), and keeping the top module in float "
            "would leave nothing quantized; ONNX Runtime's dynamic int8 quantizes such models"
        )
    return found


def _visit(module: torch.jit.ScriptModule, path: str, graph: torch.Graph, tainted_inputs: set[int], found: BranchFedLinears) -> set[int]:
    """Walk one method graph of the module at `path`; `tainted_inputs` are the positions (self
    excluded) of its arguments that are branch results. Returns its outputs' positions that are."""
    inputs = list(graph.inputs())
    tainted = {inputs[i + 1].unique() for i in tainted_inputs if i + 1 < len(inputs)}
    modules = {inputs[0].unique(): (path, module)} if inputs else {}
    _walk(graph.nodes(), path, tainted, modules, found)
    return {i for i, value in enumerate(graph.outputs()) if value.unique() in tainted}


def _walk(nodes, path: str, tainted: set[int], modules: dict[int, tuple[str, torch.jit.ScriptModule]], found: BranchFedLinears) -> None:
    """Values are keyed by `unique()`: one method's graph, blocks included, numbers them apart."""
    for node in nodes:
        kind = node.kind()
        for block in node.blocks():
            _walk(block.nodes(), path, tainted, modules, found)
        first = next(node.inputs(), None)
        if kind in BRANCH_NODES:
            tainted.update(value.unique() for value in node.outputs())
        elif kind == "prim::GetAttr" and first is not None and first.unique() in modules:
            owner_path, owner = modules[first.unique()]
            child = getattr(owner, node.s("name"), None)
            if isinstance(child, torch.jit.ScriptModule):
                modules[node.output().unique()] = (f"{owner_path}.{node.s('name')}".lstrip("."), child)
        elif kind == "aten::linear" and first is not None and first.unique() in tainted:
            # A Linear module's own forward, or a functional linear: the module whose graph this is.
            _add(found, path)
        elif kind == "prim::CallMethod" and first is not None and first.unique() in modules:
            callee_path, callee = modules[first.unique()]
            method = getattr(callee, node.s("name"), None)
            if method is None or not hasattr(method, "graph"):
                continue
            fed = {i for i, value in enumerate(list(node.inputs())[1:]) if value.unique() in tainted}
            returned = _visit(callee, callee_path, method.graph, fed, found)
            outputs = list(node.outputs())
            tainted.update(outputs[i].unique() for i in returned if i < len(outputs))


def _add(found: BranchFedLinears, path: str) -> None:
    if path not in found.modules:
        found.modules.append(path)
