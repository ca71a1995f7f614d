"""Static post-training int8 (x86 backend): observe activations on the calibration split, then
convert. TorchScript graph mode with one qconfig for the whole model ({'': qconfig}): per-module
dicts failed on a traced BERT (shared NOTES)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.ao import quantization as tq

from .. import jit
from ..calibration import Batch
from .base import PassConfig, PassOutput, register


class QuantizeStaticConfig(PassConfig):
    name: Literal["quantize_static"] = "quantize_static"
    observer: Literal["histogram", "minmax"] = Field("histogram", description="activation range observer")
    per_channel: bool = True
    calibration_batch_size: int = Field(32, ge=1)


def static_qconfig(observer: str, per_channel: bool) -> tq.QConfig:
    # reduce_range keeps x86 (fbgemm) int8 accumulation from overflowing on non-VNNI CPUs.
    activation_observer = tq.HistogramObserver if observer == "histogram" else tq.MinMaxObserver
    weight = tq.default_per_channel_weight_observer if per_channel else tq.default_weight_observer
    return tq.QConfig(activation=activation_observer.with_args(reduce_range=True), weight=weight)


@register(QuantizeStaticConfig)
def quantize_static(model: jit.ScriptModule, calibration: Batch, config: QuantizeStaticConfig) -> PassOutput:
    def observe(prepared: jit.ScriptModule, batch: Batch) -> None:
        with torch.no_grad():
            for chunk in batch.chunks(config.calibration_batch_size):
                prepared(*chunk.inputs)

    with jit.quiet_torch():
        quantized = tq.quantize_jit(
            model.eval(), {"": static_qconfig(config.observer, config.per_channel)}, observe, [calibration]
        )
    return PassOutput(quantized, {"calibration_samples": len(calibration)})
