"""The vetted op set: which TorchScript ops an uploaded model may contain, and the walk that finds them all.

TorchScript is not a sandbox (shared NOTES): `torch.from_file` reads any file the process can read,
with `shared=True` plus `copy_` it creates or overwrites files, and `print` writes into the server log.
So before any of an upload's code runs, every graph it holds is walked (every method of every
submodule, each inlined so that called functions and class methods are included, every nested
block and subgraph) and any op outside the vetted set is refused.

The vetted set is an explicit allowlist of ops (op_allowlist.py): each one known to touch no memory
outside its tensors' storage. An op not listed is refused, whatever its namespace or name says:
sparse and nested constructors (which do not check their indices, so a forward can read and write
past a buffer), file and print ops, a custom `foo::bar`.

Loading alone can run code too: `torch.jit.load` calls any scripted `__setstate__` in the archive.
So an archive that names one anywhere outside its raw tensor data is refused before it is loaded
(`check_archive_code`).

This is one layer: it keeps out the ops known to reach outside a tensor, not bugs inside kernels.
`harden_torch` adds PyTorch's own sparse index checks in every process that runs model code.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import torch

from .rnn_guard import guard_rnn_ops
from ..errors import UnsafeModelError
from .op_allowlist import is_allowed

# Any mention of the hook, not just `def __setstate__`: TorchScript's lexer joins lines ending in a
# backslash, so `def \\` + newline + `__setstate__` defines it too, and no spelling of the
# definition can avoid the name itself.
_SETSTATE = re.compile(rb"__setstate__")
# Raw tensor storage (weights, constants): bytes no loader reads as code or names.
# What the archive's loading would do that no graph walk sees. The JIT unpickler rebuilds a pickled
# sparse tensor (COO or CSR) from its indices unchecked, so a sparse buffer with out-of-range indices
# read by a plain aten::mm reads past a buffer; the sparse invariant checks do not cover the unpickler.
_REFUSED_IN_ARCHIVE = (
    (_SETSTATE, "names a scripted __setstate__, code that torch.jit.load would run before the model could be checked"),
    (re.compile(rb"_rebuild_sparse_tensor"), "stores a sparse tensor, whose indices loading does not check"),
    (re.compile(rb"torch\.distributed\.rpc"), "stores a remote reference (torch.distributed.rpc)"),
)
_REFUSED_HOW_TO = (
    "Export the model without custom __getstate__/__setstate__ methods, with dense parameters and buffers (.to_dense())"
)
# Anchored at the archive's root directory: code of a user package named `data` is still read.
_RAW_STORAGE = re.compile(r"^[^/]+/(data|constants)/\d+$")


@dataclass(frozen=True)
class Finding:
    kind: str
    location: str  # e.g. "`encoder.helper`" or "`forward`, inside a function it calls (reader)"

    def describe(self) -> str:
        return f"{self.kind} in {self.location}"


def is_vetted(kind: str) -> bool:
    """Whether an op (a node kind like `aten::linear`) may appear in an uploaded model: on the allowlist."""
    return is_allowed(kind)


def harden_torch() -> None:
    """Process-wide torch settings for every process that runs model code (a second line behind the
    op allowlist): sparse tensors get their index invariants checked, so an out-of-range index that
    reached a sparse constructor raises instead of reading or writing past a buffer; the RNN ops get
    the shape checks their kernels lack (rnn_guard.py)."""
    torch.sparse.check_sparse_tensor_invariants.enable()
    guard_rnn_ops()


def check_archive_code(data: bytes | BinaryIO) -> None:
    """Refuse an archive whose loading alone would run its code (a scripted `__setstate__`) or build
    tensors no op check sees (a stored sparse tensor, whose indices torch.jit.load never checks).

    Call before `torch.jit.load`; bytes that are not a zip are left to the loader to diagnose. `data`:
    the archive's bytes, or a seekable binary file holding it."""
    buffer = io.BytesIO(data) if isinstance(data, bytes) else data
    if not zipfile.is_zipfile(buffer):
        return
    try:
        archive = zipfile.ZipFile(buffer)
        # Every member, by its entry (not by name: a zip may hold two members of one name, and
        # readers differ on which one they take); code under code/ of any extension, pickles included.
        found = [
            (info.filename, problem)
            for info in archive.infolist()
            if not _RAW_STORAGE.search(info.filename)
            for pattern, problem in _REFUSED_IN_ARCHIVE
            if pattern.search(archive.read(info))
        ]
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError):
        return  # corrupt: torch.jit.load refuses it before compiling any code
    if found:
        member, problem = found[0]
        raise UnsafeModelError(f"the archive {problem} ({member.split('/', 1)[-1]}); optiserve refuses it. " + _REFUSED_HOW_TO)


def unvetted_ops(module: torch.jit.ScriptModule, submodules: bool = True) -> list[Finding]:
    """Every op of `module` outside the vetted set, with where it sits; one finding per op and place.

    `submodules=False` walks only the top module's methods: inlined, they hold everything those can
    run, i.e. all a server ever calls (what a worker checks on load, several times faster)."""
    findings: dict[tuple[str, str], Finding] = {}
    for path, method in _methods(module, submodules):
        refused = {kind for kind in _kinds(method.inlined_graph) if not is_vetted(kind)}
        if not refused:
            continue
        own = set(_kinds(method.graph))
        callees = _first_few(sorted(set(_callees(method.graph))))
        for kind in sorted(refused):
            location = f"`{path}`" if kind in own else f"`{path}`, inside a function or method it calls ({callees})"
            findings.setdefault((kind, location), Finding(kind, location))
    return list(findings.values())


def check_model_ops(module: torch.jit.ScriptModule, submodules: bool = True) -> None:
    """Raise UnsafeModelError naming each op outside the vetted set and where it sits."""
    findings = unvetted_ops(module, submodules)
    if not findings:
        return
    shown = "; ".join(f.describe() for f in findings[:5])
    more = f" (and {len(findings) - 5} more)" if len(findings) > 5 else ""
    raise UnsafeModelError(
        f"the model uses ops that optiserve does not run: {shown}{more}. Uploaded models may hold only ops "
        "on optiserve's allowlist (dense tensor math and control flow); sparse and nested tensors, file, "
        "process, network and printing ops (torch.from_file, print, Python calls) and ops of custom "
        "namespaces are refused. Remove them from the exported model"
    )


def op_kinds(module: torch.jit.ScriptModule) -> set[str]:
    """Every op kind in every method of `module` and its submodules, inlined, blocks included."""
    return {kind for _, method in _methods(module) for kind in _kinds(method.inlined_graph)}


def _first_few(names: list[str], count: int = 4) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _methods(module: torch.jit.ScriptModule, submodules: bool = True) -> Iterator[tuple[str, torch._C.ScriptMethod]]:
    """(dotted path, method) for every compiled method of the module and all its submodules."""
    for prefix, submodule in module.named_modules() if submodules else [("", module)]:
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
