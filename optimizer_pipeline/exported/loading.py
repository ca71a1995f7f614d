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
import tempfile
import warnings

import torch

from ..errors import InvalidModelError
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
    # compile cache there, though loading never compiles. A confined process may create nothing, so it
    # is pointed at a directory that exists (creating it is then a no-op) and that it cannot write.
    if tempfile.tempdir is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        try:
            tempfile.gettempdir()
        except FileNotFoundError:
            tempfile.tempdir = os.environ["TORCHINDUCTOR_CACHE_DIR"] = "/"


def runnable(program: torch.export.ExportedProgram) -> torch.nn.Module:
    """The program as a callable module (inputs are checked against its shape constraints on each call)."""
    return program.module()


def traced_stand_in(program: torch.export.ExportedProgram) -> torch.jit.ScriptModule:
    """A TorchScript module computing what the program computes, at any batch size the program takes."""
    module = program.module()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in _INFERRED_SIZE_OPS and len(node.args) > 1:
            sizes = _sizes_without_the_batch(node)
            if sizes is not None:
                node.args = (node.args[0], sizes, *node.args[2:])
    module.recompile()
    # The program's own input check compares symbolic sizes, which tracing cannot follow; the parity
    # check below runs the real program, checks included.
    module._forward_pre_hooks.clear()
    example = example_inputs(program, batch=2)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, strict=False, check_trace=False)
    _check_parity(program, traced)
    return traced


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
        raise InvalidModelError(
            "the program computes a size from the batch in a way optiserve's TorchScript passes cannot follow (its traced "
            f"form differs from the program at batch 3{detail}); export a model whose shapes use -1 or flatten for the batch"
        )


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
