"""OpenVINO int8: NNCF post-training quantization of an IR over the calibration split.

Preset and model type come from the model: an attention graph (Softmax next to MatMuls, or a fused attention op) is
quantized as a transformer (NNCF then keeps LayerNorm-like ops and residual adds in float, the
parts that broke int8 MiniLM under torch and ORT, shared NOTES) with the mixed preset, everything
else with the performance preset. Like the ORT passes it can keep chosen ops in float
(`ignored_nodes`, NNCF's ignored_scope) and find the worst ones itself (`skip_sensitive`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Literal

import openvino as ov
import torch
from pydantic import Field

from ...intake.calibration import Batch
from ...fidelity.measures import compare_outputs
from ...limits import MAX_LAYERS_KEPT_IN_FLOAT
from ...intake.model_loading import run_model
from ...runtimes.openvino import OpenVinoModel, compile_model, precision_of, set_precision
from ..base import PassConfig, PassOutput, register

# NNCF's own default: statistics from up to 300 samples, one inference each.
CALIBRATION_SAMPLES = 300
# Ranking costs one compile and one forward per quantized op (as ort_quantize's ranking).
SENSITIVITY_SAMPLES = 64


class OvQuantizeConfig(PassConfig):
    name: Literal["ov_quantize"] = "ov_quantize"

    consumes = ("openvino",)
    produces = "openvino"
    finishing = True
    fallback_field = "skip_sensitive"

    preset: Literal["auto", "performance", "mixed"] = Field(
        "auto", description="auto: mixed (asymmetric activations) for transformers, performance (symmetric) otherwise"
    )
    model_type: Literal["auto", "transformer", "other"] = Field("auto", description="auto: transformer when the graph has attention")
    fast_bias_correction: bool = True
    ignored_nodes: list[str] = Field(default_factory=list, description="OpenVINO op names (of the converted IR) kept in float")
    skip_sensitive: int = Field(0, ge=0, le=MAX_LAYERS_KEPT_IN_FLOAT, description="also keep this many of the most sensitive ops in float")


@register(OvQuantizeConfig)
def ov_quantize(model: OpenVinoModel, calibration: Batch, config: OvQuantizeConfig) -> PassOutput:
    float_model = model.read()
    transformer = config.model_type == "transformer" or (config.model_type == "auto" and _has_attention(float_model))
    preset = config.preset if config.preset != "auto" else ("mixed" if transformer else "performance")
    details: dict[str, Any] = {"model_type": "transformer" if transformer else "other", "preset": preset}
    float_ops = list(config.ignored_nodes)
    quantized = _quantize(float_model, calibration, preset, transformer, config.fast_bias_correction, float_ops)
    if config.skip_sensitive:
        ranking = _rank_sensitive_ops(float_model, quantized, calibration)
        details["sensitivity"] = ranking
        float_ops += [op for op, _ in ranking[: config.skip_sensitive] if op not in float_ops]
        quantized = _quantize(float_model, calibration, preset, transformer, config.fast_bias_correction, float_ops)
    if float_ops:
        details["float_nodes"] = float_ops
    quantized_ops = _quantized_ops(quantized)
    if not quantized_ops:
        raise ValueError("NNCF found no operation to quantize in this model")
    details["int8_ops"] = len(quantized_ops)
    details["calibration_samples"] = min(len(calibration), CALIBRATION_SAMPLES)
    set_precision(quantized, precision_of(float_model))
    return PassOutput(OpenVinoModel.of(quantized), details)


def _has_attention(model: ov.Model) -> bool:
    # From ONNX attention arrives as MatMul + Softmax; from TorchScript's scaled_dot_product_attention, as one op.
    types = {op.get_type_name() for op in model.get_ops()}
    return "ScaledDotProductAttention" in types or {"Softmax", "MatMul"} <= types


def _quantize(model: ov.Model, calibration: Batch, preset: str, transformer: bool, fast_bias_correction: bool, ignored: list[str]) -> ov.Model:
    # Imported here: NNCF takes 3 s to import, and every process that imports the passes (workers,
    # API servers through the registry) would pay it; only a quantization needs it.
    import nncf

    nncf.set_log_level(logging.ERROR)
    count = min(len(calibration), CALIBRATION_SAMPLES)
    inputs = [tensor[:count].numpy() for tensor in calibration.inputs]
    # One sample per item, as NNCF's statistics expect.
    dataset = nncf.Dataset(range(count), lambda i: [array[i : i + 1] for array in inputs])
    # NNCF draws its progress bars on stdout (rich), whatever the log level.
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            subset_size=count,
            fast_bias_correction=fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )


def _quantized_ops(model: ov.Model) -> dict[str, list[str]]:
    """{op name: names of the FakeQuantize ops feeding it} for every op that reads a quantized input."""
    found: dict[str, list[str]] = {}
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            continue
        sources = [value.get_node() for value in op.input_values()]
        fake_quantizes = [source.get_friendly_name() for source in sources if source.get_type_name() == "FakeQuantize"]
        if fake_quantizes:
            found[op.get_friendly_name()] = fake_quantizes
    return found


def _rank_sensitive_ops(float_model: ov.Model, quantized: ov.Model, calibration: Batch) -> list[tuple[str, float]]:
    """(op, 1 - cosine to the float model when only that op's inputs are quantized), worst first.

    The same measure as ort_quantize's and quantize_static's rankings. Instead of one NNCF run per
    op, each op is quantized alone by bypassing every other FakeQuantize of the quantized IR."""
    sample = calibration.head(min(SENSITIVITY_SAMPLES, len(calibration)))
    threads = torch.get_num_threads()
    reference = run_model(compile_model(float_model, threads), sample)
    ranking = []
    for op, fake_quantizes in _quantized_ops(quantized).items():
        alone = compile_model(_without_fake_quantizes(quantized, keep=set(fake_quantizes)), threads)
        ranking.append((op, round(1.0 - compare_outputs(reference, run_model(alone, sample)).cosine, 8)))
    return sorted(ranking, key=lambda item: item[1], reverse=True)


def _without_fake_quantizes(model: ov.Model, keep: set[str]) -> ov.Model:
    copy = model.clone()
    for op in copy.get_ops():
        if op.get_type_name() == "FakeQuantize" and op.get_friendly_name() not in keep:
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(op.input_value(0))
    copy.validate_nodes_and_infer_types()
    return copy


