"""The peers of bench/peers.py: each tool run the plain way, outside the pipeline, with its defaults.

- torch static PTQ: `quantize_jit` with the x86 qconfig over the calibration batch;
- ONNX Runtime fp32, static int8 (`quant_pre_process` + `quantize_static`, QDQ, per-channel, int8),
  dynamic int8 (`quantize_dynamic` with its defaults);
- OpenVINO fp32 (`convert_model` of the ONNX file, compiled with an f32 precision hint), OpenVINO
  as converted with its own defaults (compiled with no config at all: bf16 on a CPU that has it),
  and NNCF int8 (`nncf.quantize` with its defaults).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from optimizer_pipeline import jit
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.passes import parse_pass_spec, run_pass
from optimizer_pipeline.runtimes import LoadedVariant, load_variant

BATCH = 32
# Not one of optiserve's runtimes: an OpenVINO IR compiled exactly as `core.compile_model(model, "CPU")`.
OV_DEFAULTS = "openvino-defaults"


@dataclass
class Entry:
    name: str
    runtime: str
    data: bytes | None
    error: str | None = None


def load_any(runtime: str, data: bytes, threads: int | None = None) -> LoadedVariant:
    """Our runtimes through optiserve's loader; OV_DEFAULTS compiled with OpenVINO's own defaults."""
    if runtime != OV_DEFAULTS:
        return load_variant(runtime, data, threads)
    from optimizer_pipeline.runtimes.openvino import OpenVinoModel, OvVariant, core

    return OvVariant(core().compile_model(OpenVinoModel(data).read(), "CPU"))


def describe_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:150]}"


def build_peers(archive: bytes, calibration: Batch) -> list[Entry]:
    exported: dict[str, bytes] = {}

    def onnx_fp32() -> bytes:
        exported["onnx"] = run_pass(jit.load_archive(archive), calibration, parse_pass_spec("onnx_export")).model.data
        return exported["onnx"]

    builders: list[tuple[str, str, Callable[[], bytes]]] = [
        ("torch static int8 (quantize_jit x86)", "torchscript", lambda: _torch_static(archive, calibration)),
        ("ORT fp32", "onnxruntime", onnx_fp32),
        ("ORT static int8 (QDQ per-channel)", "onnxruntime", lambda: _ort_static(exported["onnx"], calibration)),
        ("ORT dynamic int8", "onnxruntime", lambda: _ort_dynamic(exported["onnx"])),
        ("OpenVINO fp32", "openvino", lambda: _openvino(exported["onnx"], None)),
        ("OpenVINO as converted (its defaults)", OV_DEFAULTS, lambda: _openvino(exported["onnx"], None)),
        ("OpenVINO NNCF int8", "openvino", lambda: _openvino(exported["onnx"], calibration)),
    ]
    entries = []
    for name, runtime, build in builders:
        try:
            entries.append(Entry(name, runtime, build()))
        except Exception as exc:  # a peer that cannot be built is a row of the table, not the end of the run
            entries.append(Entry(name, runtime, None, describe_error(exc)))
    return entries


def _torch_static(archive: bytes, calibration: Batch) -> bytes:
    from torch.ao.quantization import get_default_qconfig, quantize_jit

    with jit.quiet_torch():
        model = jit.load_archive(archive)
        chunks = [chunk.inputs for chunk in calibration.chunks(BATCH)]
        quantized = quantize_jit(model, {"": get_default_qconfig("x86")}, lambda m, data: [m(*x) for x in data], [chunks])
    return jit.archive_bytes(quantized)


def _ort_static(onnx_bytes: bytes, calibration: Batch) -> bytes:
    import onnx
    from onnxruntime import quantization as ortq

    class Reader(ortq.CalibrationDataReader):
        def __init__(self, names: list[str]) -> None:
            self.feeds = iter([
                {name: tensor.numpy() for name, tensor in zip(names, chunk.inputs)}
                for chunk in calibration.chunks(BATCH) if len(chunk) == BATCH
            ])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as directory:
        source, prepared, output = (Path(directory) / n for n in ("model.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        ortq.quant_pre_process(source, prepared)
        names = [i.name for i in onnx.load(prepared).graph.input]
        ortq.quantize_static(
            prepared, output, Reader(names), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
            activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
        )
        return output.read_bytes()


def _ort_dynamic(onnx_bytes: bytes) -> bytes:
    from onnxruntime import quantization as ortq

    with tempfile.TemporaryDirectory() as directory:
        source, output = Path(directory) / "model.onnx", Path(directory) / "dynamic.onnx"
        source.write_bytes(onnx_bytes)
        ortq.quantize_dynamic(source, output, weight_type=ortq.QuantType.QInt8)
        return output.read_bytes()


def _openvino(onnx_bytes: bytes, calibration: Batch | None) -> bytes:
    import openvino as ov

    from optimizer_pipeline.runtimes.openvino import OpenVinoModel

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.onnx"
        path.write_bytes(onnx_bytes)
        model = ov.convert_model(path)
    if calibration is not None:
        import nncf

        # One sample per item, every input of the model in order (MiniLM takes two).
        samples = [[t.numpy() for t in sample] for sample in zip(*(tensor.split(1) for tensor in calibration.inputs))]
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    return OpenVinoModel.of(model).data


def timing_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    return batch.head(BATCH).inputs
