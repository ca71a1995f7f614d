"""ONNX Runtime int8 quantization of an exported model: static (QDQ, calibrated) and dynamic.

Both can keep chosen nodes in float (`nodes_to_exclude`), and can find the nodes worth keeping
themselves (`skip_sensitive`), per node rather than per layer. Quantizing every op type breaks
transformer encoders (shared NOTES); this is the fallback.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnxruntime import quantization as ortq
from onnxruntime.quantization.onnx_model import ONNXModel
from pydantic import Field

from ...intake.calibration import Batch
from ...fidelity.measures import compare_outputs
from ...limits import MAX_BATCH_SIZE, MAX_LAYERS_KEPT_IN_FLOAT
from ...intake.model_loading import run_model
from ...runtimes.onnxruntime import OnnxModel, load_session, quiet_onnx
from ..base import PassConfig, PassOutput, register
from .qdq_graph import feed_float_inputs, graph_input_names, int8_nodes

# Ranking costs one quantization and one forward per node; a slice of the calibration split shows
# each node's error well enough (as quantize_static's layer ranking does).
SENSITIVITY_SAMPLES = 64

CALIBRATE_METHODS = {
    "minmax": ortq.CalibrationMethod.MinMax,
    "entropy": ortq.CalibrationMethod.Entropy,
    "percentile": ortq.CalibrationMethod.Percentile,
}

class _OrtQuantizeConfig(PassConfig):
    """What both ORT quantization passes share: ONNX in, ONNX out, and nothing after them."""

    consumes = ("onnx",)
    produces = "onnx"
    finishing = True
    # Lists, not tuples: the search reads a list-typed field's list as one value, not as choices.
    op_types: list[str] | None = Field(
        None, description="ONNX op types to quantize, e.g. ['MatMul', 'Gemm']; None: every type ORT quantizes"
    )
    nodes_to_exclude: list[str] = Field(default_factory=list, description="ONNX node names (of the exported graph) kept in float")
    skip_sensitive: int = Field(0, ge=0, le=MAX_LAYERS_KEPT_IN_FLOAT, description="also keep this many of the most sensitive nodes in float")

    fallback_field = "skip_sensitive"


class OrtQuantizeStaticConfig(_OrtQuantizeConfig):
    name: Literal["ort_quantize_static"] = "ort_quantize_static"

    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # int8 activations left 3 of 4 convs of a residual block unfused (float Conv) here; uint8 fused all.
    activations: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    calibration_batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE)


class OrtQuantizeDynamicConfig(_OrtQuantizeConfig):
    name: Literal["ort_quantize_dynamic"] = "ort_quantize_dynamic"

    # Per-tensor weights took all-MiniLM-L6-v2 to cosine 0.960, per-channel to 0.993, for 10% more time.
    per_channel: bool = True


@register(OrtQuantizeStaticConfig)
def ort_quantize_static(model: OnnxModel, calibration: Batch, config: OrtQuantizeStaticConfig) -> PassOutput:
    with _workspace(model) as (workdir, prepared):
        quantizer = _StaticQuantizer(prepared, workdir, calibration, config)
        quantized, details = _keep_sensitive_in_float(prepared, quantizer.quantize, calibration, config, int8_nodes)
    details["calibration_samples"] = len(calibration)
    details["int8_nodes"] = int8_nodes(quantized)
    return PassOutput(OnnxModel(quantized), details)


@register(OrtQuantizeDynamicConfig)
def ort_quantize_dynamic(model: OnnxModel, calibration: Batch, config: OrtQuantizeDynamicConfig) -> PassOutput:
    with _workspace(model) as (workdir, prepared):
        # quantize_dynamic splits each Gemm into MatMul + Add under new names; doing that first
        # gives nodes_to_exclude and the sensitivity ranking names that exist in the graph it quantizes.
        graph = onnx.load(prepared)
        ONNXModel(graph).replace_gemm_with_matmul()
        onnx.save(graph, prepared)

        def quantize(nodes_to_exclude: Sequence[str] = (), nodes_to_quantize: list[str] | None = None) -> bytes:
            output = workdir / "dynamic.onnx"
            ortq.quantize_dynamic(
                prepared,
                output,
                op_types_to_quantize=config.op_types,
                per_channel=config.per_channel,
                weight_type=ortq.QuantType.QInt8,
                nodes_to_quantize=nodes_to_quantize,
                nodes_to_exclude=list(nodes_to_exclude),
            )
            return output.read_bytes()

        def quantizable(_: bytes) -> list[str]:
            # Dynamic quantization renames what it replaces, so candidates come from the float graph.
            op_types = set(config.op_types or ortq.registry.IntegerOpsRegistry)
            return [node.name for node in graph.graph.node if node.op_type in op_types]

        quantized, details = _keep_sensitive_in_float(prepared, quantize, calibration, config, quantizable)
    integer_ops = [node.op_type for node in onnx.load_from_string(quantized).graph.node if "Integer" in node.op_type]
    # Conv becomes ConvInteger, slower than float Conv on CPU (shared NOTES): make it visible.
    details["integer_ops"] = {op: integer_ops.count(op) for op in sorted(set(integer_ops))}
    return PassOutput(OnnxModel(quantized), details)


Quantize = Callable[..., bytes]  # (nodes_to_exclude=..., nodes_to_quantize=...) -> quantized ONNX bytes


def _keep_sensitive_in_float(
    prepared: Path, quantize: Quantize, calibration: Batch, config: _OrtQuantizeConfig, candidates: Callable[[bytes], list[str]]
) -> tuple[bytes, dict[str, Any]]:
    """Quantize, keeping `nodes_to_exclude` and then the `skip_sensitive` worst nodes in float."""
    details: dict[str, Any] = {}
    float_nodes = list(config.nodes_to_exclude)
    quantized = quantize(nodes_to_exclude=float_nodes)
    if config.skip_sensitive:
        ranking = _rank_sensitive_nodes(prepared, quantize, calibration, candidates(quantized))
        details["sensitivity"] = ranking
        float_nodes += [node for node, _ in ranking[: config.skip_sensitive] if node not in float_nodes]
        quantized = quantize(nodes_to_exclude=float_nodes)
    if float_nodes:
        details["float_nodes"] = float_nodes
    return quantized, details


@contextlib.contextmanager
def _workspace(model: OnnxModel) -> Iterator[tuple[Path, Path]]:
    """A temporary directory holding the model after quant_pre_process; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="optiserve-ort-") as directory, quiet_onnx():
        workdir = Path(directory)
        (workdir / "exported.onnx").write_bytes(model.data)
        # Shape inference and graph cleanup first: ORT quantizes tensors of unknown shape poorly.
        ortq.quant_pre_process(workdir / "exported.onnx", workdir / "prepared.onnx")
        yield workdir, workdir / "prepared.onnx"


class _CalibrationBatches(ortq.CalibrationDataReader):
    """Feeds the calibration split to ORT's calibrator, chunk by chunk."""

    def __init__(self, batch: Batch, input_names: list[str], chunk_size: int) -> None:
        # Equal chunks: the histogram calibrators (entropy, percentile) stack every run's outputs and
        # fail on a short last chunk. Filling it from the start counts a few samples twice.
        size = min(chunk_size, len(batch))
        chunks = batch.head(math.ceil(len(batch) / size) * size).chunks(size)
        self.feeds = [{name: tensor.numpy() for name, tensor in zip(input_names, chunk.inputs)} for chunk in chunks]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


class _StaticQuantizer:
    """quantize_static with the pass's settings; calibrates on the first call, reuses the ranges after."""

    def __init__(self, prepared: Path, workdir: Path, calibration: Batch, config: OrtQuantizeStaticConfig) -> None:
        self.prepared = prepared
        self.workdir = workdir
        self.config = config
        self.reader = _CalibrationBatches(calibration, graph_input_names(onnx.load(prepared)), config.calibration_batch_size)
        self.ranges = workdir / "calibration.json"

    def quantize(self, nodes_to_exclude: Sequence[str] = (), nodes_to_quantize: list[str] | None = None) -> bytes:
        output = self.workdir / "static.onnx"
        self.reader.rewind()
        ortq.quantize_static(
            self.prepared,
            output,
            self.reader,
            quant_format=ortq.QuantFormat.QDQ,
            op_types_to_quantize=self.config.op_types,
            per_channel=self.config.per_channel,
            activation_type=ortq.QuantType.QInt8 if self.config.activations == "int8" else ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            nodes_to_quantize=nodes_to_quantize,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=CALIBRATE_METHODS[self.config.calibrate_method],
            calibration_cache_path=self.ranges,
        )
        return feed_float_inputs(output.read_bytes(), set(nodes_to_exclude))


def _rank_sensitive_nodes(prepared: Path, quantize: Quantize, calibration: Batch, nodes: list[str]) -> list[tuple[str, float]]:
    """(node, 1 - cosine to the float model when only that node is quantized), worst first.

    Alone rather than all-but-one: each node's own damage, not entangled with the others'. The same
    measure as quantize_static's layer ranking, so the two read alike in a report."""
    sample = calibration.head(min(SENSITIVITY_SAMPLES, len(calibration)))
    threads = torch.get_num_threads()
    reference = run_model(load_session(prepared.read_bytes(), threads), sample)
    ranking = []
    for node in nodes:
        alone = load_session(quantize(nodes_to_quantize=[node]), threads)
        ranking.append((node, round(1.0 - compare_outputs(reference, run_model(alone, sample)).cosine, 8)))
    return sorted(ranking, key=lambda item: item[1], reverse=True)
