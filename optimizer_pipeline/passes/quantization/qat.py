"""`quantize_qat`: int8 with quantization-aware training, for models that static int8 hurts too much.

TorchScript graph mode (shared NOTES): prepare_jit with a QAT qconfig inserts fake-quantize ops,
the model is trained by distillation from the original (the `finetune` loop), then put in eval mode
and converted. x86 backend, one qconfig for the whole model (per-module dicts fail on some graphs).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch.ao import quantization as tq

from ... import jit
from ...intake.calibration import Batch
from ...channel_groups import set_tensor_attribute
from ...limits import MAX_EPOCHS, MAX_LEARNING_RATE
from ..base import PassOutput, register
from ..recovery.finetune import DistillationConfig, distill


class QuantizeQatConfig(DistillationConfig):
    name: Literal["quantize_qat"] = Field("quantize_qat", alias="pass")
    per_channel: bool = Field(True, description="per-output-channel weight scales (else one scale per tensor)")
    lr: float = Field(1e-4, gt=0, le=MAX_LEARNING_RATE, description="small: the weights are already trained, only rounding is learned around")
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)

    finishing = True


@register(QuantizeQatConfig)
def quantize_qat(model: jit.ScriptModule, calibration: Batch, config: QuantizeQatConfig) -> PassOutput:
    qconfig = tq.get_default_qat_qconfig("x86")
    if not config.per_channel:
        qconfig = tq.QConfig(activation=qconfig.activation, weight=tq.default_fused_wt_fake_quant)
    with jit.quiet_torch():
        prepared = tq.prepare_jit(model, {"": qconfig})
    _make_parameters_trainable(prepared)
    details = distill(prepared, calibration, config)
    # Convert the inference graph: scripted dropout/BatchNorm read the training flag at run time.
    prepared.eval()
    with jit.quiet_torch():
        quantized = jit.reload(tq.convert_jit(prepared))
    return PassOutput(quantized, details)


def _make_parameters_trainable(model: jit.ScriptModule) -> None:
    """prepare_jit can leave parameters that are outputs of other ops; the optimizer needs leaves."""
    for name, parameter in list(model.named_parameters()):
        if not parameter.is_leaf:
            set_tensor_attribute(model, name, parameter.detach().clone())
