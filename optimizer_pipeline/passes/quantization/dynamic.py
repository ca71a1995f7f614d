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
from .control_flow import branch_fed_linears


class QuantizeDynamicConfig(PassConfig):
    name: Literal["quantize_dynamic"] = "quantize_dynamic"

    finishing = True
    per_channel: bool = Field(True, description="per-output-channel weight scales (more accurate)")


@register(QuantizeDynamicConfig)
def quantize_dynamic(model: jit.ScriptModule, calibration: Batch, config: QuantizeDynamicConfig) -> PassOutput:
    qconfig = tq.per_channel_dynamic_qconfig if config.per_channel else tq.default_dynamic_qconfig
    # Refused or worked around before torch runs: its failure on these comes late and reads as a torch
    # internal error (control_flow.py).
    branch_fed = branch_fed_linears(model)
    if branch_fed.impossible:
        raise ValueError(branch_fed.impossible)
    details: dict = {}
    qconfig_dict = {"": qconfig}
    if branch_fed.modules:
        # Per-module entries only where needed: they failed on a traced BERT (shared NOTES).
        qconfig_dict.update({path: None for path in branch_fed.modules})
        details["float_layers"] = branch_fed.modules
        details["float_because"] = "each takes the result of a scripted `if` as input, which torch's dynamic int8 cannot quantize"
    with jit.quiet_torch():
        quantized = tq.quantize_dynamic_jit(model.eval(), qconfig_dict)
    recurrent = sorted(layer_types(model) & {"LSTM", "GRU"})
    if recurrent:
        # Graph-mode dynamic quantization only rewrites aten::linear; say so rather than imply otherwise.
        details["not_quantized"] = f"{', '.join(recurrent)} stay float: TorchScript graph mode quantizes Linear only"
    return PassOutput(quantized, details)
