"""Dynamic int8: weights quantized ahead of time, activations at run time. TorchScript graph mode
(quantize_dynamic_jit), because eager quantize_dynamic silently does nothing on a ScriptModule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch.ao import quantization as tq

from ... import jit
from ...intake.calibration import Batch
from ..base import PassConfig, PassOutput, register
from ..modules import layer_types


class QuantizeDynamicConfig(PassConfig):
    name: Literal["quantize_dynamic"] = "quantize_dynamic"

    finishing = True
    per_channel: bool = Field(True, description="per-output-channel weight scales (more accurate)")


@register(QuantizeDynamicConfig)
def quantize_dynamic(model: jit.ScriptModule, calibration: Batch, config: QuantizeDynamicConfig) -> PassOutput:
    qconfig = tq.per_channel_dynamic_qconfig if config.per_channel else tq.default_dynamic_qconfig
    with jit.quiet_torch():
        quantized = tq.quantize_dynamic_jit(model.eval(), {"": qconfig})
    recurrent = sorted(layer_types(model) & {"LSTM", "GRU"})
    details = {}
    if recurrent:
        # Graph-mode dynamic quantization only rewrites aten::linear; say so rather than imply otherwise.
        details["not_quantized"] = f"{', '.join(recurrent)} stay float: TorchScript graph mode quantizes Linear only"
    return PassOutput(quantized, details)
