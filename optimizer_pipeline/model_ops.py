"""The vetted op set: which TorchScript ops an uploaded model may contain, and the walk that finds them all.

TorchScript is not a sandbox (shared NOTES): `torch.from_file` reads any file the process can read,
with `shared=True` plus `copy_` it creates or overwrites files, and `print` writes into the server log.
So before any of an upload's code runs, every graph it holds is walked (every method of every
submodule, each inlined so that called functions and class methods are included, every nested
block and subgraph) and any op outside the vetted set is refused.

The vetted set is an allowlist of namespaces whose ops are tensor math or interpreter structure,
minus a denylist of the ops among them that reach outside the process's tensors. A namespace not
listed (a custom `foo::bar`, or a library's ops) is refused, whatever its op does.

Loading alone can run code too: `torch.jit.load` calls any scripted `__setstate__` in the archive.
So an archive that defines one is refused before it is loaded (`check_archive_code`).

This is one layer: it keeps out the ops that reach outside the process, not bugs inside aten kernels.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import UnsafeModelError

# aten: tensor math; prim: the interpreter's control flow and data structures; quantized: int8
# kernels, which our own quantize passes emit (with aten::quantize_per_tensor and friends).
ALLOWED_NAMESPACES = frozenset({"aten", "prim", "quantized"})

# Ops inside the allowed namespaces that do I/O, print, leave TorchScript, or change process-wide
# state that other models share.
DENIED_KINDS = frozenset(
    {
        "aten::from_file",
        "aten::save",
        "aten::_print",
        "aten::manual_seed",
        "aten::seed",
        "prim::Print",
        "prim::PythonOp",
        "prim::IgnoredPythonOp",
        "prim::rpc_async",
        "prim::rpc_sync",
        "prim::rpc_remote",
        # A call left after inlining has a target that is not known statically, so its ops cannot be
        # checked.
        "prim::CallFunction",
        "prim::CallMethod",
    }
)
# Catches I/O ops that a later torch adds under a new name (e.g. an `aten::_load_...`).
DENIED_WORDS = ("file", "save", "load", "print", "rpc")

# Allowed although it writes to the log: scripted library code emits it (nn.MultiheadAttention,
# nn.TransformerEncoderLayer, F.softmax and F.interpolate all hold an aten::warn), so refusing it
# would refuse every scripted transformer. The processes that run model code route warnings.
TOLERATED_KINDS = frozenset({"aten::warn"})

_SETSTATE = re.compile(rb"\bdef\s+__setstate__\b")


@dataclass(frozen=True)
class Finding:
    kind: str
    location: str  # e.g. "`encoder.helper`" or "`forward`, inside a function it calls (reader)"

    def describe(self) -> str:
        return f"{self.kind} in {self.location}"


def is_vetted(kind: str) -> bool:
    """Whether an op (a node kind like `aten::linear`) may appear in an uploaded model."""
    if kind in TOLERATED_KINDS:
        return True
    namespace, _, name = kind.partition("::")
    if namespace not in ALLOWED_NAMESPACES or kind in DENIED_KINDS:
        return False
    return not any(word in name.lower() for word in DENIED_WORDS)


def check_archive_code(data: bytes) -> None:
    """Refuse an archive whose code would run while it loads (a scripted `__setstate__`).

    Call before `torch.jit.load`; bytes that are not a zip are left to the loader to diagnose."""
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        return
    try:
        archive = zipfile.ZipFile(buffer)
        sources = [name for name in archive.namelist() if "/code/" in name and name.endswith(".py")]
        hooked = [name for name in sources if _SETSTATE.search(archive.read(name))]
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):
        return  # corrupt: torch.jit.load refuses it before compiling any code
    if hooked:
        raise UnsafeModelError(
            f"the archive defines a scripted __setstate__ ({hooked[0].split('/code/', 1)[1]}), code that "
            "torch.jit.load would run before the model could be checked; optiserve refuses it. Export the "
            "model without custom __getstate__/__setstate__ methods"
        )


def unvetted_ops(module: torch.jit.ScriptModule) -> list[Finding]:
    """Every op of `module` outside the vetted set, with where it sits; one finding per op and place."""
    findings: dict[tuple[str, str], Finding] = {}
    for path, method in _methods(module):
        refused = {kind for kind in _kinds(method.inlined_graph) if not is_vetted(kind)}
        if not refused:
            continue
        own = set(_kinds(method.graph))
        callees = _first_few(sorted(set(_callees(method.graph))))
        for kind in sorted(refused):
            location = f"`{path}`" if kind in own else f"`{path}`, inside a function or method it calls ({callees})"
            findings.setdefault((kind, location), Finding(kind, location))
    return list(findings.values())


def check_model_ops(module: torch.jit.ScriptModule) -> None:
    """Raise UnsafeModelError naming each op outside the vetted set and where it sits."""
    findings = unvetted_ops(module)
    if not findings:
        return
    shown = "; ".join(f.describe() for f in findings[:5])
    more = f" (and {len(findings) - 5} more)" if len(findings) > 5 else ""
    raise UnsafeModelError(
        f"the model uses ops that optiserve does not run: {shown}{more}. Uploaded models may hold tensor "
        "math and control flow only; file, process, network and printing ops (torch.from_file, print, "
        "Python calls) and ops of custom namespaces are refused. Remove them from the exported model"
    )


def _first_few(names: list[str], count: int = 4) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _methods(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch._C.ScriptMethod]]:
    """(dotted path, method) for every compiled method of the module and all its submodules."""
    for prefix, submodule in module.named_modules():
        for name in submodule._c._method_names():
            yield (f"{prefix}.{name}" if prefix else name), submodule._c._get_method(name)


def _nodes(block: torch._C.Block | torch._C.Graph) -> Iterator[torch._C.Node]:
    """Every node, descending into if/loop blocks and graph-valued attributes (e.g. a fork's subgraph)."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)
        for attribute in node.attributeNames():
            if node.kindOf(attribute) == "g":
                yield from _nodes(node.g(attribute))


def _kinds(graph: torch._C.Graph) -> Iterator[str]:
    return (node.kind() for node in _nodes(graph))


def _callees(graph: torch._C.Graph) -> Iterator[str]:
    """Names of the functions and methods a graph calls, for saying where an inlined op came from."""
    for node in _nodes(graph):
        if node.kind() == "prim::CallFunction":
            yield str(node.inputsAt(0).type()).removeprefix("__torch__.")
        elif node.kind() == "prim::CallMethod":
            receiver = str(node.inputsAt(0).type()).removeprefix("__torch__.")
            yield f"{receiver}.{node.s('name')}"
