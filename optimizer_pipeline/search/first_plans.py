"""The default search's first plans, less those that cannot pay on this model.

Dynamic int8 quantizes weights of Linear / LSTM / MatMul layers. On a model whose weights are
nearly all convolutions, torch's dynamic int8 leaves them in float (1.0x on the ResNet-18 shape)
and ONNX Runtime's runs them as ConvInteger, 0.3-0.98x of float TorchScript (0.89x on the
ResNet-18 shape at 3x96x96, where that trial alone took a tenth of the optimization). Leaving
both out of such a model's first trials saves that time for plans that can win.
"""

from __future__ import annotations

from typing import Any

from .. import jit

CONV_SHARE = 0.9  # of the weights in conv kernels, at or above which dynamic int8 is left out
DYNAMIC_INT8 = ("quantize_dynamic", "ort_quantize_dynamic")


def first_plans_for(first: list[list[dict[str, Any]]], model: jit.ScriptModule) -> tuple[list[list[dict[str, Any]]], str | None]:
    """(the plans to run first, a note saying what was left out and why, or None)."""
    share = conv_weight_share(model)
    if share < CONV_SHARE:
        return first, None
    kept = [plan for plan in first if plan[-1]["pass"] not in DYNAMIC_INT8]
    if len(kept) == len(first):
        return first, None
    return kept, (
        f"dynamic int8 ({', '.join(DYNAMIC_INT8)}) left out of the first trials: {share:.0%} of the weights are conv "
        f"kernels, which it leaves in float (torch) or runs as slow ConvInteger (ONNX Runtime)"
    )


def conv_weight_share(model: jit.ScriptModule) -> float:
    """Share of the weight-matrix and kernel elements (tensors of 2+ dims) that are conv kernels (3+ dims)."""
    total = kernels = 0
    for _, parameter in model.named_parameters():
        if parameter.dim() >= 2:
            total += parameter.numel()
            kernels += parameter.numel() if parameter.dim() >= 3 else 0
    return kernels / total if total else 0.0
