"""Static post-training int8 (x86 backend): observe activations on the calibration split, then
convert, in TorchScript graph mode.

One qconfig for the whole model ({'': qconfig}) is the safe default: per-module dicts failed on a
traced BERT (shared NOTES). On CNNs and MLPs here, `{'': qconfig, 'layer': None}` does work, which
gives the sensitive-layer fallback: `skip_sensitive=N` ranks layers by the error that quantizing
each one alone causes, and keeps the N worst in float.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch.ao import quantization as tq

from ... import jit
from ...intake.calibration import Batch
from ...fidelity.measures import compare_outputs
from ...limits import MAX_BATCH_SIZE, MAX_LAYERS_KEPT_IN_FLOAT
from ...intake.model_loading import run_model
from ..base import PassConfig, PassOutput, register
from ..modules import weighted_layers

# Samples used to rank layer sensitivity: enough to see the error, cheap enough to run per layer.
SENSITIVITY_SAMPLES = 64


class QuantizeStaticConfig(PassConfig):
    name: Literal["quantize_static"] = "quantize_static"

    finishing = True
    observer: Literal["histogram", "minmax"] = Field("histogram", description="activation range observer")
    per_channel: bool = True
    calibration_batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE)
    skip_sensitive: int = Field(0, ge=0, le=MAX_LAYERS_KEPT_IN_FLOAT, description="keep this many of the most sensitive layers in float")
    skip_layers: list[str] = Field(default_factory=list, description="layer names to keep in float")

    fallback_field = "skip_sensitive"


def static_qconfig(observer: str, per_channel: bool) -> tq.QConfig:
    # reduce_range keeps x86 (fbgemm) int8 accumulation from overflowing on non-VNNI CPUs.
    activation_observer = tq.HistogramObserver if observer == "histogram" else tq.MinMaxObserver
    weight = tq.default_per_channel_weight_observer if per_channel else tq.default_weight_observer
    return tq.QConfig(activation=activation_observer.with_args(reduce_range=True), weight=weight)


@register(QuantizeStaticConfig)
def quantize_static(model: jit.ScriptModule, calibration: Batch, config: QuantizeStaticConfig) -> PassOutput:
    qconfig = static_qconfig(config.observer, config.per_channel)
    details: dict = {"calibration_samples": len(calibration)}
    float_layers = list(config.skip_layers)
    if config.skip_sensitive:
        ranking = rank_sensitive_layers(model, calibration, qconfig, config.calibration_batch_size)
        details["sensitivity"] = ranking
        float_layers += [name for name, _ in ranking[: config.skip_sensitive] if name not in float_layers]
    if float_layers:
        details["float_layers"] = float_layers
    quantized = _quantize(model, calibration, {"": qconfig, **{name: None for name in float_layers}}, config.calibration_batch_size)
    return PassOutput(quantized, details)


def rank_sensitive_layers(
    model: jit.ScriptModule, calibration: Batch, qconfig: tq.QConfig, chunk_size: int
) -> list[tuple[str, float]]:
    """(layer, 1 - cosine to the float model when only that layer is quantized), worst first."""
    sample = calibration.head(min(SENSITIVITY_SAMPLES, len(calibration)))
    reference = run_model(model, sample)
    ranking = []
    for name, _ in weighted_layers(model):
        alone = _quantize(copy.deepcopy(model), sample, {"": None, name: qconfig}, chunk_size)
        fidelity = compare_outputs(reference, run_model(alone, sample))
        ranking.append((name, round(1.0 - fidelity.cosine, 8)))
    return sorted(ranking, key=lambda item: item[1], reverse=True)


def _quantize(model: jit.ScriptModule, calibration: Batch, qconfig_dict: dict, chunk_size: int) -> jit.ScriptModule:
    def observe(prepared: jit.ScriptModule, batch: Batch) -> None:
        with torch.no_grad():
            for chunk in batch.chunks(chunk_size):
                prepared(*chunk.inputs)

    with jit.quiet_torch():
        return tq.quantize_jit(model.eval(), qconfig_dict, observe, [calibration])
