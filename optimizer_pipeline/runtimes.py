"""Execution runtimes a variant can run on, one small loader each.

A loaded variant is any callable `(*tensors) -> Tensor | tuple | dict of Tensors` (a ScriptModule
is one). The pipeline measures candidates through these loaders and the server's inference
workers load variants through them, so both always run a variant the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import jit, onnx_runtime
from .variants import Runtime

LoadedVariant = Callable[..., Any]


@dataclass(frozen=True)
class RuntimeSupport:
    name: Runtime
    owns: Callable[[Any], bool]  # is this in-memory model one of ours?
    serialize: Callable[[Any], bytes]
    load: Callable[[bytes, int | None], LoadedVariant]  # (file bytes, threads) -> callable


def _load_torchscript(data: bytes, threads: int | None) -> LoadedVariant:
    # torch's thread count is process-wide; the caller sets it (torch.set_num_threads).
    return jit.load_archive(data)


RUNTIMES: dict[str, RuntimeSupport] = {
    "torchscript": RuntimeSupport(
        name="torchscript",
        owns=lambda model: isinstance(model, jit.ScriptModule),
        serialize=jit.archive_bytes,
        load=_load_torchscript,
    ),
    "onnxruntime": RuntimeSupport(
        name="onnxruntime",
        owns=lambda model: isinstance(model, onnx_runtime.OnnxModel),
        serialize=lambda model: model.data,
        load=onnx_runtime.load_session,
    ),
}


def runtime_of(model: Any) -> RuntimeSupport:
    for support in RUNTIMES.values():
        if support.owns(model):
            return support
    raise TypeError(f"no runtime knows how to serve a {type(model).__name__}")


def load_variant(runtime: str, data: bytes, threads: int | None = None) -> LoadedVariant:
    return RUNTIMES[runtime].load(data, threads)
