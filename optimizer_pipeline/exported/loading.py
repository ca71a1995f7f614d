"""Loading a vetted `.pt2`, and the TorchScript stand-in the TorchScript passes work on.

The program itself is what serves as the original. The pipeline's passes (quantize_jit, pruning,
fine-tuning, the ONNX and OpenVINO exports) take TorchScript, so they get a stand-in traced from
`ep.module()`. Tracing turns every size into a constant; sizes the program computes from the batch
(a `view(x, [batch * heads, 10, 8])`) are rewritten first: a shape argument of view, reshape or
expand whose result has one batch-dependent dimension gets -1 there and constants elsewhere, which
those ops resolve at run time. The stand-in is
then checked against the program at a second batch size, so a size that still got baked in is
found at upload, not in serving.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings

import torch

from ..errors import InvalidModelError
from ..fidelity.outputs import flatten_outputs
from .archive import HOW_TO_EXPORT, vet_exported_archive

_INFERRED_SIZE_OPS = {
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.expand.default,
}
PARITY_TOLERANCE = 1e-4


def load_exported_program(data: bytes) -> torch.export.ExportedProgram:
    """Vet the archive, then load it; raise InvalidModelError / UnsafeModelError saying what is wrong."""
    vetted = vet_exported_archive(data)
    _tempdir_for_confined_import()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(vetted))
    except Exception as exc:
        raise InvalidModelError(f"the .pt2 program could not be loaded ({type(exc).__name__}: {str(exc)[:300]}). {HOW_TO_EXPORT}") from None
    _check_dynamic_batch(program)
    return program


def _tempdir_for_confined_import() -> None:
    # torch.export.load imports torch._dynamo, which asks tempfile for a directory and creates its
    # compile cache there, though loading never compiles. A confined process may create nothing, so
    # the cache is pointed at a directory that exists (creating it is then a no-op).
    if "torch._dynamo" in sys.modules:
        return
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/")
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        tempfile.tempdir = "/"


def runnable(program: torch.export.ExportedProgram) -> torch.nn.Module:
    """The program as a callable module (inputs are checked against its shape constraints on each call)."""
    return program.module()


def io_names(program: torch.export.ExportedProgram, module: torch.nn.Module, sample: tuple[torch.Tensor, ...]) -> tuple[list[str], list[str]]:
    """(input names, output names) of a variant converted from the program: its inputs as exported,
    its outputs flattened as the original's (fidelity/outputs.py). `module` is `program.module()`."""
    inputs = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    with torch.no_grad():
        outputs = [name for name, _ in flatten_outputs(module(*sample))]
    return inputs, outputs


def traced_stand_in(program: torch.export.ExportedProgram) -> torch.jit.ScriptModule:
    """A TorchScript module computing what the program computes, at any batch size the program takes."""
    module = program.module()
    _sizes_read_at_run_time(module.graph)
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in _INFERRED_SIZE_OPS and len(node.args) > 1:
            sizes = _sizes_without_the_batch(node)
            if sizes is not None:
                node.args = (node.args[0], sizes, *node.args[2:])
    module.recompile()
    # The program's own input check compares symbolic sizes, which tracing cannot follow; the parity
    # check below runs the real program, checks included.
    module._forward_pre_hooks.clear()
    traced = _trace(module, program, batch=2)
    # A size the trace baked in would make the stand-in run a batch of 3 with buffers made for 2, and
    # some ATen kernels (aten.lstm's state) do not check: a trace at 3 must come out the same, or the
    # stand-in is refused before it ever runs at another batch.
    if _constants(traced) != _constants(_trace(module, program, batch=3)):
        raise InvalidModelError(_cannot_follow("a size in its traced form stays at the batch it was traced at"))
    _check_parity(program, traced)
    return traced


def _trace(module: torch.nn.Module, program: torch.export.ExportedProgram, batch: int) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, example_inputs(program, batch), strict=False, check_trace=False)


def _constants(traced: torch.jit.ScriptModule) -> list[str]:
    """The traced graph's constants, in order: what differs between two traces that baked in their batch."""
    return [str(node).split("=", 1)[-1].split("#")[0].strip() for node in traced.inlined_graph.nodes() if node.kind() == "prim::Constant"]


def _sizes_read_at_run_time(graph: torch.fx.Graph) -> None:
    """Make tracing record the sizes the program reads from its inputs, instead of baking in the
    batch it traced at: `aten.sym_size.int(x, d)` becomes `x.size(d)`, and a factory op given such a
    size (`aten.zeros.default([1, batch, 64])`, an LSTM's zero state) becomes torch's own function
    (`torch.zeros`), the one whose tracing keeps the size a run-time value."""
    sizes = set()
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
            sizes.add(size)
    for node in graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and _takes_any(node, sizes):
            function = getattr(torch._C._VariableFunctions, node.target._schema.name.split("::")[-1], None)
            if function is not None and node.target not in _INFERRED_SIZE_OPS:
                node.target = function


def _takes_any(node: torch.fx.Node, values: set[torch.fx.Node]) -> bool:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return any(value in values for value in found)


def _sizes_without_the_batch(node: torch.fx.Node) -> list[int] | None:
    """The node's size argument with its one symbolic dimension as -1 and the rest as the constants
    its output has; None when it has no symbolic dimension, or more than one."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not any(isinstance(size, torch.fx.Node) for size in node.args[1]):
        return None
    symbolic = [position for position, size in enumerate(value.shape) if isinstance(size, torch.SymInt)]
    if len(symbolic) != 1 or len(value.shape) != len(node.args[1]):
        return None
    return [-1 if position == symbolic[0] else int(size) for position, size in enumerate(value.shape)]


def example_inputs(program: torch.export.ExportedProgram, batch: int) -> tuple[torch.Tensor, ...]:
    """All-zero inputs of the program's shapes and dtypes, with `batch` samples."""
    tensors = []
    for value in _user_input_values(program):
        shape = [batch, *(int(size) for size in value.shape[1:])]
        tensors.append(torch.zeros(shape, dtype=value.dtype))
    return tuple(tensors)


def _user_input_values(program: torch.export.ExportedProgram) -> list:
    user_inputs = set(program.graph_signature.user_inputs)
    values = [node.meta["val"] for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    if not values or not all(isinstance(value, torch.Tensor) for value in values):
        raise InvalidModelError("the program's inputs must all be tensors; " + HOW_TO_EXPORT)
    return values


def _check_dynamic_batch(program: torch.export.ExportedProgram) -> None:
    static = [value for value in _user_input_values(program) if value.dim() == 0 or not isinstance(value.shape[0], torch.SymInt)]
    if static:
        shapes = ", ".join(str(list(value.shape)) for value in static)
        raise InvalidModelError(
            f"the program was exported with a fixed batch size (input shapes {shapes}); optiserve batches requests, so the "
            "first dimension must be dynamic: export with dynamic_shapes={'x': {0: torch.export.Dim('batch')}} for each input"
        )


def _check_parity(program: torch.export.ExportedProgram, traced: torch.jit.ScriptModule) -> None:
    inputs = tuple(torch.randn_like(t) if t.is_floating_point() else t for t in example_inputs(program, batch=3))
    try:
        with torch.no_grad():
            expected = _tensors(program.module()(*inputs))
            got = _tensors(traced(*inputs))
        same = len(expected) == len(got) and all(
            e.shape == g.shape and torch.allclose(e.float(), g.float(), atol=PARITY_TOLERANCE, rtol=PARITY_TOLERANCE) for e, g in zip(expected, got)
        )
    except Exception as exc:
        same, detail = False, f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    else:
        detail = ""
    if not same:
        raise InvalidModelError(_cannot_follow(f"its traced form differs from the program at batch 3{detail}"))


def _cannot_follow(why: str) -> str:
    return (
        f"the program computes a size from the batch in a way optiserve's TorchScript passes cannot follow ({why}); "
        "export a model whose shapes use -1 or flatten for the batch"
    )


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
