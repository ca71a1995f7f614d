"""Execution runtimes a variant can run on: TorchScript, ONNX Runtime, OpenVINO and (for a .pt2
upload's original) the torch.export program itself, one module each.

Every runtime implements base.RuntimeSupport (recognise, serialize, load with a thread count); the
pipeline measures candidates and the server's workers load variants through `load_variant`, so a
variant is always run the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import LoadedVariant, RuntimeSupport
from .exported import ExportedRuntime
from .onnxruntime import OnnxRuntime
from .openvino import OpenVinoRuntime
from .torchscript import TorchScriptRuntime

RUNTIMES: dict[str, RuntimeSupport] = {
    runtime.name: runtime for runtime in (TorchScriptRuntime(), OnnxRuntime(), OpenVinoRuntime(), ExportedRuntime())
}


def runtime_of(model: Any) -> RuntimeSupport:
    for support in RUNTIMES.values():
        if support.owns(model):
            return support
    raise TypeError(f"no runtime knows how to serve a {type(model).__name__}")


def runtime_serving(model_format: str) -> RuntimeSupport:
    """The runtime that serves what a plan's last pass produces ("torchscript", "onnx", "openvino")."""
    return next(support for support in RUNTIMES.values() if support.serves_format == model_format)


def load_variant(runtime: str, data: bytes, threads: int | None = None) -> LoadedVariant:
    return RUNTIMES[runtime].load(data, threads)


def load_variant_file(runtime: str, path: Path, threads: int | None = None) -> LoadedVariant:
    """`load_variant` from a stored file, read in place where the runtime can (no copy in memory)."""
    return RUNTIMES[runtime].load_file(path, threads)


__all__ = ["RUNTIMES", "LoadedVariant", "RuntimeSupport", "load_variant", "load_variant_file", "runtime_of", "runtime_serving"]
