"""OpenVINO as an execution runtime: the IR that passes hand on, stored as one file, and its loader.

An OpenVINO IR is two files (model.xml, model.bin) and the store keeps one file per variant, so
the IR travels as an uncompressed zip of the two. OpenVINO's own single-file form (an exported
compiled model) is tied to the CPU and the OpenVINO release that compiled it, so it is not stored.

A loaded variant is called like the TorchScript original, with torch tensors, and returns
{output name: tensor} under the original's flattened output names (see outputs.py).
"""

from __future__ import annotations

import functools
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import openvino as ov
import torch

from .base import RuntimeSupport

XML, WEIGHTS = "model.xml", "model.bin"
# The IR's runtime-info key for the float precision it is compiled with. Not a property of the IR
# to OpenVINO (it is a compile option), so ov_convert records the plan's choice here.
PRECISION_KEY = "optiserve_inference_precision"
Precision = Literal["f32", "bf16"]

# Measured here (bench/openvino_hint.py): with one synchronous call at a time, as a worker and the
# timing both call, THROUGHPUT's two streams split the two cores and ran 1.3-2.0x slower than
# LATENCY at every batch size from 1 to 128, so LATENCY is the hint at every batch size.
PERFORMANCE_HINT = "LATENCY"
CHUNK_BYTES = 16 << 20  # model.bin is copied out of the zip in pieces, never whole twice


@functools.cache
def core() -> ov.Core:
    return ov.Core()


@dataclass(frozen=True)
class OpenVinoModel:
    """An OpenVINO IR between passes and on disk: model.xml and model.bin in one uncompressed zip."""

    data: bytes

    @classmethod
    def of(cls, model: ov.Model) -> OpenVinoModel:
        with tempfile.TemporaryDirectory(prefix="optiserve-ov-") as directory:
            xml = Path(directory) / XML
            # Weights stay float32: fp16 compression would change the outputs the fidelity check measured.
            ov.save_model(model, xml, compress_to_fp16=False)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
                archive.write(xml, XML)
                archive.write(xml.with_suffix(".bin"), WEIGHTS)
        return cls(buffer.getvalue())

    def read(self) -> ov.Model:
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            xml, weights = archive.read(XML), archive.read(WEIGHTS)
        return core().read_model(model=xml.decode(), weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))


class OvVariant:
    """A compiled OpenVINO model called like a ScriptModule: torch tensors in, {output name: tensor} out."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.compiled = compiled
        self.weights: np.ndarray | None = None  # the IR's weights, where the compiled model uses them in place
        self.request = compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the model takes {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in inputs]
        results = self.request.infer(arrays)  # copies the outputs out of the request (share_outputs=False)
        return {name: torch.from_numpy(results[port]) for name, port in zip(self.output_names, self.compiled.outputs)}


def set_precision(model: ov.Model, precision: Precision) -> None:
    model.set_rt_info(precision, PRECISION_KEY)


def precision_of(model: ov.Model) -> Precision:
    # OpenVINO's CPU default is bf16 wherever the CPU has it (this machine does): float32 unless the
    # plan asked for bf16, so the outputs served are the ones the fidelity check measured.
    return model.get_rt_info(PRECISION_KEY).astype(str) if model.has_rt_info(PRECISION_KEY) else "f32"


def compile_model(model: ov.Model, threads: int | None) -> OvVariant:
    config = {
        "INFERENCE_NUM_THREADS": threads or 0,  # 0 = OpenVINO's default (every core)
        "PERFORMANCE_HINT": PERFORMANCE_HINT,
        "INFERENCE_PRECISION_HINT": precision_of(model),
    }
    return OvVariant(core().compile_model(model, "CPU", config))


class OpenVinoRuntime(RuntimeSupport):
    name = "openvino"
    serves_format = "openvino"

    def owns(self, model: Any) -> bool:
        return isinstance(model, OpenVinoModel)

    def serialize(self, model: Any) -> bytes:
        return model.data

    def load(self, data: bytes, threads: int | None) -> OvVariant:
        return compile_model(OpenVinoModel(data).read(), threads)

    def load_file(self, path: Path, threads: int | None) -> OvVariant:
        # model.bin is read once, into a buffer OpenVINO uses in place (shared memory). Measured on a
        # 151 MB IR: 343 MB peak and kept, against a 577 MB peak (319 MB kept) through `load`'s copies,
        # and 487 MB (344 kept) with a copying ov.Tensor.
        with zipfile.ZipFile(path) as archive:
            xml = archive.read(XML)
            weights = bytearray(archive.getinfo(WEIGHTS).file_size)
            with archive.open(WEIGHTS) as member:
                view, filled = memoryview(weights), 0
                while filled < len(weights) and (chunk := member.read(min(CHUNK_BYTES, len(weights) - filled))):
                    view[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
        buffer = np.frombuffer(weights, dtype=np.uint8)
        variant = compile_model(core().read_model(model=xml.decode(), weights=ov.Tensor(buffer, shared_memory=True)), threads)
        variant.weights = buffer  # the compiled model keeps using it: freed under it, the next call crashed
        return variant
