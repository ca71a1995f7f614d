"""Tensor <-> wire: Open Inference Protocol datatype names and raw little-endian bytes (base64).

Shared by the server and the Python client, so it depends on torch and the standard library only.
"""

from __future__ import annotations

import binascii
import math

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
DATATYPES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def wire_ready(tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A contiguous CPU tensor of a wire datatype, and that datatype's name (quantized -> float)."""
    tensor = tensor.detach().cpu()
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if tensor.dtype not in DATATYPES:
        tensor = tensor.float()
    return tensor.contiguous(), DATATYPES[tensor.dtype]


def to_b64(tensor: torch.Tensor) -> str:
    """Raw bytes of a wire-ready tensor, base64-encoded."""
    if not tensor.numel():
        return ""
    return binascii.b2a_base64(tensor.reshape(-1).view(torch.uint8).numpy(), newline=False).decode("ascii")


def from_b64(text: str, datatype: str, shape: list[int]) -> torch.Tensor:
    """Decode `data_b64`; ValueError says what does not fit."""
    dtype = TORCH_DTYPES[datatype]
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("data_b64 is not valid base64") from None
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"data_b64 holds {len(raw)} bytes; shape {shape} of {datatype} needs {expected}")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    # bytearray: frombuffer needs a writable buffer to hand out a tensor that may be modified.
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
