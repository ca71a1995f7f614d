"""ONNX Runtime as an execution runtime: the in-memory ONNX model passes hand on, and its loader.

A loaded ONNX variant is called like the TorchScript original, with torch tensors, and returns
{output name: tensor} under the original's flattened output names (see outputs.py), so fidelity
checks and the server treat both runtimes alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .base import RuntimeSupport

# How the pipeline times an ONNX variant; the report carries it (see passes/conversion/onnx_export.py).
TIMING_NOTE = (
    "timed in the pipeline's process, alternating call by call with the TorchScript original (ABBA); "
    "ONNX Runtime with intra-op spinning off, as load_variant serves it"
)


@dataclass(frozen=True)
class OnnxModel:
    """An exported model between passes: the .onnx file's bytes (input and output names live in the graph)."""

    data: bytes

    def proto(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.data)


class OrtVariant:
    """An ONNX Runtime session called like a ScriptModule: torch tensors in, {output name: tensor} out."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the model takes {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, inputs)}
        arrays = self.session.run(self.output_names, feed)
        return {name: torch.from_numpy(array) for name, array in zip(self.output_names, arrays)}


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0 = ORT's default (one per physical core)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool busy-waits after each run by default; in a process that also runs torch (the
    # pipeline's timing, a worker serving both variants) that steals the cores torch needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


def load_session(data: bytes | str, threads: int | None = None) -> OrtVariant:
    """Load .onnx bytes (or a file path) for CPU inference with `threads` intra-op threads (None: ORT's default)."""
    session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
    return OrtVariant(session)


class OnnxRuntime(RuntimeSupport):
    name = "onnxruntime"
    serves_format = "onnx"

    def owns(self, model: Any) -> bool:
        return isinstance(model, OnnxModel)

    def serialize(self, model: Any) -> bytes:
        return model.data

    def load(self, data: bytes, threads: int | None) -> OrtVariant:
        return load_session(data, threads)

    def load_file(self, path: Path, threads: int | None) -> OrtVariant:
        return load_session(str(path), threads)  # read in place: no copy of the file in this process


class _DropOnnxRuntimeWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_onnx() -> Iterator[None]:
    """Silence the exporter's and the quantization tool's advice and harmless warnings.

    torch.onnx warns that the TorchScript exporter is legacy on every call; ORT's quantization tool
    logs through the root logger (e.g. "Axis 1 is out-of-range for ... LayerNorm.weight", harmless
    per shared NOTES) and its own loggers, and its calibrators print progress to stdout. Errors
    still get through."""
    root, ort_logger, exporter_logger = logging.getLogger(), logging.getLogger("onnxruntime"), logging.getLogger("torch.onnx")
    drop, ort_logger_level, exporter_level = _DropOnnxRuntimeWarnings(), ort_logger.level, exporter_logger.level
    root.addFilter(drop)
    ort_logger.setLevel(logging.ERROR)  # e.g. onnxruntime.quantization.shape_inference's progress
    exporter_logger.setLevel(logging.ERROR)  # the dynamo exporter's "torchvision is not installed. Skipping ..."
    # The tool's own sessions log through ORT's default C++ logger ("Removing initializer ...").
    ort.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", module=r"onnxruntime")
            yield
    finally:
        ort.set_default_logger_severity(2)  # ORT's default; it offers no getter to restore from
        ort_logger.setLevel(ort_logger_level)
        exporter_logger.setLevel(exporter_level)
        root.removeFilter(drop)
