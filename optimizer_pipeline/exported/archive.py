"""Vetting a `.pt2` archive before torch reads any of it.

torch.export.load trusts its archive: a weight or constant flagged `use_pickle` is read with
`torch.load(weights_only=False)`, custom and opaque objects are unpickled, the sample inputs fall
back to a full unpickle when the safe one fails, every symbolic shape is parsed with
`sympy.sympify` (an `eval`), and a node's target is resolved with `getattr` on `torch` (so
`torch.load` is a valid target). Each member is therefore checked here first, as plain JSON and
bytes: the layout must be torch's, no member may be pickled, every node must call a vetted ATen op
(the same allowlist as TorchScript) or a few integer builtins on sizes, and every shape expression
must use sympy's arithmetic only. The sample inputs (the one pickle torch's writer always adds) must
load with the safe unpickler, and are then left out: optiserve takes inputs from the calibration batch.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import InvalidModelError, UnsafeModelError
from ..intake.model_ops import is_vetted

HOW_TO_EXPORT = (
    "Export it with `torch.export.save(torch.export.export(model.eval(), example_inputs, "
    "dynamic_shapes=...), 'model.pt2')`"
)
# Python builtins a program applies to sizes (e.g. batch * heads before a view); nothing else runs.
SIZE_BUILTINS = frozenset(
    f"_operator.{name}" for name in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow")
)
STRIDED_LAYOUT = 7  # torch/_export/serde/schema.py Layout.Strided; every other layout is sparse or mkldnn
# Members torch.export.save writes, below the archive's top folder.
_FIXED_MEMBERS = frozenset(
    {"archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id", "version", ".format/version"}
)
_MEMBER_FOLDERS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/", ".data/")
# sympy's arithmetic and the functions torch's deserializer itself offers sympify; a symbol is 's12' or 'u3'.
_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Mul", "Add", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
        "And", "Or", "Not", "true", "false", "True", "False", "oo", "zoo", "nan", "positive", "integer", "nonnegative", "real",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
        "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)
_SYMPY_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|'[su]\d+'|\"[su]\d+\"|\d+(?:\.\d+)?(?:e-?\d+)?|[(),=+\-*/<>!&|~])")
_OP_TARGET = re.compile(r"^torch\.ops\.(\w+)\.(\w+)\.(\w+)$")


def is_exported_archive(data: bytes) -> bool:
    """Whether these bytes are a torch.export archive (by content: its format marker), not TorchScript."""
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        return False
    try:
        names = zipfile.ZipFile(buffer).namelist()
    except zipfile.BadZipFile:
        return False
    return any(name.endswith("/archive_format") for name in names) and any("/models/" in name and name.endswith(".json") for name in names)


def vet_exported_archive(data: bytes) -> bytes:
    """Check every member of a .pt2; return the archive as torch may read it, or raise saying what is refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidModelError(f"the .pt2 archive is corrupt or truncated ({exc}); upload the complete file. {HOW_TO_EXPORT}") from None
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1:
        raise InvalidModelError(f"the .pt2 archive has {len(roots)} top folders; torch.export.save writes one. {HOW_TO_EXPORT}")
    (root,) = roots
    members = {info.filename.split("/", 1)[1]: info for info in infos if "/" in info.filename and not info.is_dir()}
    models = [name for name in members if name.startswith("models/") and name.endswith(".json")]
    if len(models) != 1:
        raise InvalidModelError(f"the .pt2 archive holds {len(models)} programs; optiserve serves an archive of one (torch.export.save of one program)")
    for name in members:
        if name not in _FIXED_MEMBERS and not name.startswith(_MEMBER_FOLDERS):
            raise UnsafeModelError(f"the .pt2 archive has a member torch.export.save does not write ({root}/{name}); optiserve refuses it")
    model_name = models[0].removeprefix("models/").removesuffix(".json")
    program = _json(archive, f"{root}/models/{model_name}.json")
    _check_payloads(_json(archive, f"{root}/data/weights/{model_name}_model_weights_config.json", f"{root}/data/weights/model_weights_config.json"), "weight")
    _check_payloads(_json(archive, f"{root}/data/constants/{model_name}_model_constants_config.json", f"{root}/data/constants/model_constants_config.json"), "constant")
    _check_graph(program)
    _check_expressions(program)
    _check_sample_inputs(archive, f"{root}/data/sample_inputs/{model_name}.pt")
    return _without_sample_inputs(archive, infos, root)


def _json(archive: zipfile.ZipFile, *candidates: str) -> Any:
    for name in candidates:
        try:
            text = archive.read(name)
        except KeyError:
            continue
        try:
            return json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidModelError(f"the .pt2 member {name} is not valid JSON ({exc})") from None
    return {"config": {}}


def _check_payloads(config: Any, kind: str) -> None:
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InvalidModelError(f"the .pt2 archive's {kind} list is malformed")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict):
            raise InvalidModelError(f"the .pt2 archive's {kind} {fqn!r} is malformed")
        path = str(entry.get("path_name", ""))
        if entry.get("use_pickle") or not path.startswith(("weight_", "tensor_", "constant_")) or "/" in path:
            raise UnsafeModelError(
                f"the .pt2 archive stores its {kind} {fqn!r} as a pickled object ({path}); loading it would run code. "
                "optiserve accepts programs whose weights and constants are plain tensors"
            )
        layout = (entry.get("tensor_meta") or {}).get("layout", STRIDED_LAYOUT)
        if layout != STRIDED_LAYOUT:
            raise UnsafeModelError(f"the .pt2 archive's {kind} {fqn!r} is a sparse or opaque tensor (layout {layout}); optiserve serves dense tensors only")


def _check_graph(program: Any) -> None:
    try:
        nodes = program["graph_module"]["graph"]["nodes"]
    except (KeyError, TypeError):
        raise InvalidModelError("the .pt2 archive's program has no graph; " + HOW_TO_EXPORT) from None
    refused: dict[str, str] = {}
    for node in nodes:
        target = str(node.get("target", "")) if isinstance(node, dict) else ""
        problem = _target_problem(target)
        if problem is not None:
            refused.setdefault(target, _where(node) + problem)
    if refused:
        shown = "; ".join(f"{target} ({where})" for target, where in list(refused.items())[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        raise UnsafeModelError(
            f"the program calls ops that optiserve does not run: {shown}{more}. Uploaded programs may hold vetted ATen "
            "tensor math only; custom ops (your own torch.library ops), control-flow subgraphs, sparse and I/O ops are refused"
        )


def _target_problem(target: str) -> str | None:
    if target in SIZE_BUILTINS:
        return None
    match = _OP_TARGET.match(target)
    if match is None:
        return "not an ATen op"
    namespace, op, _overload = match.groups()
    if namespace not in ("aten", "prim", "quantized"):
        return f"an op of the {namespace!r} namespace"
    return None if is_vetted(f"{namespace}::{op}") else "not on the vetted op list"


def _where(node: dict) -> str:
    metadata = node.get("metadata") or {}
    stack = str(metadata.get("nn_module_stack", ""))
    module = stack.split(",")[-1].split("'")[0] if stack else ""
    outputs = node.get("outputs") or [{}]
    produced = next(iter(outputs[0].values()), {}) if isinstance(outputs[0], dict) else {}
    name = produced.get("name", "") if isinstance(produced, dict) else ""
    return f"node {name}" + (f" in {module}" if module else "") + ": "


def _check_expressions(value: Any) -> None:
    for text in _expression_strings(value):
        _check_expression(text)


def _expression_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "expr_str":
                yield str(inner)
            else:
                yield from _expression_strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _expression_strings(inner)


def _check_expression(text: str) -> None:
    position = 0
    while position < len(text.rstrip()):
        match = _SYMPY_TOKEN.match(text, position)
        if match is None or match.end() == position or (match.group(1) is not None and match.group(1) not in _SYMPY_NAMES):
            raise UnsafeModelError(
                f"the program's shape expression {text[:120]!r} is not sympy arithmetic; torch would evaluate it as Python. "
                "optiserve refuses it"
            )
        position = match.end()


def _check_sample_inputs(archive: zipfile.ZipFile, name: str) -> None:
    # torch falls back to a full unpickle when the safe one fails: a member the safe unpickler refuses
    # is one that would run code.
    try:
        data = archive.read(name)
    except KeyError:
        return
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        raise UnsafeModelError(
            "the .pt2 archive's sample inputs are a pickle of more than tensors; torch.export.load would unpickle it "
            "in full, running its code. optiserve refuses it: save the program again with torch.export.save"
        ) from None


def _without_sample_inputs(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: str) -> bytes:
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_STORED) as rewritten:
        for info in infos:
            emptied = info.filename.startswith(f"{root}/data/sample_inputs/")
            rewritten.writestr(info.filename, b"" if emptied else archive.read(info.filename))
    return output.getvalue()
