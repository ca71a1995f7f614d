"""Reading an uploaded model, and telling the user exactly what is wrong when it is not TorchScript."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import jit
from .calibration import Batch, check_labels_fit
from ..errors import InvalidCalibrationError, InvalidModelError, NonFiniteOutputError
from ..exported import is_exported_archive, load_exported_program, traced_stand_in
from ..fidelity.measures import labelled_output
from .model_ops import check_archive_code, check_model_ops
from ..fidelity.outputs import NamedOutputs, flatten_outputs

# The line a TorchScript interpreter error ends with, after its tracebacks: the real cause.
_CAUSE = re.compile(r"^[\w.]+(?:Error|Exception): ", re.MULTILINE)

HOW_TO_EXPORT = (
    "Export it with `torch.export.save(torch.export.export(model.eval(), example_inputs, dynamic_shapes=...), "
    "'model.pt2')`, or as TorchScript with `torch.jit.save(torch.jit.trace(model.eval(), example_inputs), 'model.pt')`."
)


def load_model(source: bytes | str | Path) -> jit.ScriptModule:
    """Load a TorchScript archive or a torch.export program (path or bytes), told apart by content, or
    raise InvalidModelError saying what it is instead. A program comes back as its TorchScript stand-in
    (exported/loading.py), which is what the passes work on.

    Its code is vetted (model_ops.py, exported/archive.py) before any of it runs; UnsafeModelError refuses it otherwise."""
    return load_upload(source)[0]


def load_upload(source: bytes | str | Path) -> tuple[jit.ScriptModule, torch.export.ExportedProgram | None]:
    """As load_model, with a .pt2 upload's program as well (None for TorchScript), for the passes that
    start from it: the archive is vetted and loaded once for both."""
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    data = bytes(data)
    if not data:
        raise InvalidModelError("the model file is empty. " + HOW_TO_EXPORT)
    if is_exported_archive(data):
        program = load_exported_program(data)
        module = traced_stand_in(program)
        check_model_ops(module)
        return module, program
    check_archive_code(data)
    try:
        module = jit.load_archive(data)
    except Exception as exc:
        raise InvalidModelError(_diagnose(data, exc)) from None
    check_model_ops(module)
    return module, None


def _diagnose(data: bytes, exc: Exception) -> str:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        if data[:2] == b"\x80\x02" or data[:1] == b"\x80":
            return "this is a legacy (non-zip) pickle, not a TorchScript archive. " + HOW_TO_EXPORT
        return (
            "this is not a TorchScript archive (not a zip file; truncated or not a model). " + HOW_TO_EXPORT
        )
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return "the archive is corrupt or truncated; upload the complete file written by torch.jit.save."
    if any("serialized_exported_program" in name for name in names):
        return "this is a torch.export program in the format of an older PyTorch; save it again with this one. " + HOW_TO_EXPORT
    if any(name.endswith("data.pkl") for name in names) and not any("/code/" in name for name in names):
        return _diagnose_torch_save(data)
    return f"the TorchScript archive could not be loaded ({_first_line(exc)}). " + HOW_TO_EXPORT


def _diagnose_torch_save(data: bytes) -> str:
    try:
        value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return (
            "this is a pickled Python object (likely a whole nn.Module saved with torch.save(model)), not "
            "TorchScript; it would need your source code to load and is never unpickled here. " + HOW_TO_EXPORT
        )
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return (
            "this is a state_dict (parameters only, no code), not a model. Load it into your nn.Module, then "
            + HOW_TO_EXPORT[0].lower()
            + HOW_TO_EXPORT[1:]
        )
    return f"this is a torch.save file holding a {type(value).__name__}, not a TorchScript model. " + HOW_TO_EXPORT


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _cause(exc: Exception) -> str:
    """What went wrong inside a model call: for a TorchScript error, its last `...Error: ...` line(s)
    (the op's own message, e.g. the shapes it got), not the interpreter's generic first line."""
    text = str(exc)
    starts = [match.start() for match in _CAUSE.finditer(text)] if "TorchScript" in text else []
    if not starts:
        return _first_line(exc)
    return " ".join(text[starts[-1] :].split())[:300]


def run_model(model: Callable[..., Any], batch: Batch, chunk_size: int = 256) -> NamedOutputs:
    """Forward the whole batch (in chunks, to bound memory) and return named outputs.

    `model` is a ScriptModule or any loaded variant (see runtimes/)."""
    from ..fidelity.outputs import concat_outputs

    parts = []
    with torch.inference_mode(), jit.quiet_torch():
        for chunk in batch.chunks(chunk_size):
            parts.append(flatten_outputs(model(*chunk.inputs)))
    return concat_outputs(parts)


def check_model_accepts(model: jit.ScriptModule, batch: Batch, sample_count: int = 2) -> NamedOutputs:
    """Run a few samples through the model; raise a typed error if the calibration does not fit.

    Returns the outputs of those samples. Checks: forward runs, outputs are tensors with the batch as
    their first dimension, every value is finite, and labels (if any) are ids of the classes scored.
    """
    sample = batch.head(min(sample_count, len(batch)))
    try:
        with torch.inference_mode(), jit.quiet_torch():
            raw = model(*sample.inputs)
    except Exception as exc:
        raise InvalidCalibrationError(
            f"the model failed on the calibration inputs (shapes given: {sample.describe()}; the model's "
            f"forward takes {jit.forward_argument_names(model)}): {_cause(exc)}"
        ) from None
    outputs = flatten_outputs(raw)
    for name, tensor in outputs:
        if tensor.dim() == 0 or tensor.shape[0] != len(sample):
            raise InvalidModelError(
                f"output {name!r} has shape {tuple(tensor.shape)} for a batch of {len(sample)}; optiserve needs "
                f"every output's first dimension to be the batch"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteOutputError(
                f"output {name!r} contains NaN or Inf on the calibration inputs; check the model and the "
                f"input scaling (e.g. normalisation) of the calibration batch"
            )
    scores = labelled_output(outputs)
    if batch.labels is not None and scores is not None:
        check_labels_fit(batch.labels, dict(outputs)[scores].shape[1], scores)
    return outputs
