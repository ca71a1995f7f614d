"""The server's one home for tensor conversion: torch <-> the Open Inference Protocol's datatypes and bytes.

Builds on wire/ (datatype names, the numpy dtypes and little-endian byte layouts they travel in)
and adds only what needs torch: the torch dtype of each name, BF16 (which numpy lacks), and the
/predict body's tensor objects (base64 bytes or flat lists) and nested lists. The Python client
does not use this module (it must not need torch); it speaks wire/ directly.
"""

from __future__ import annotations

import binascii
import warnings
from typing import Any, get_args

import numpy as np
import torch

from wire import WireTensor, numpy_dtype
from wire.codec import element_count

from .schemas import Datatype, TensorObject
from .shared_tensors import SharedArray

# torch warns when it wraps a read-only array, as every request body's view is. One filter for this
# message, set at import: a catch_warnings around each wrap cost 4x the wrap itself.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def _torch_dtype(datatype: str) -> torch.dtype:
    if datatype == "BF16":
        return torch.bfloat16  # numpy has none: wire/ carries its bit patterns as uint16
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype(datatype))).dtype


# The datatypes the server computes with: torch's uint16/32/64 hold values but few ops take them,
# so an output of those goes out as float (wire_ready), as any other dtype without a name here.
TORCH_DTYPES: dict[str, torch.dtype] = {name: _torch_dtype(name) for name in get_args(Datatype)}
DATATYPES: dict[torch.dtype, str] = {dtype: name for name, dtype in TORCH_DTYPES.items()}


class TensorDecodeError(ValueError):
    """An input cannot become a tensor; the message names the input and the problem."""


def datatype_of(torch_dtype_name: str) -> str:
    """The wire name of a torch dtype named as the upload's summary records it ("float32"); FP32 when it has none."""
    return DATATYPES.get(getattr(torch, torch_dtype_name, None), "FP32")


def wire_ready(tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A contiguous CPU tensor of a wire datatype, and that datatype's name (quantized -> float)."""
    tensor = tensor.detach().cpu()
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if tensor.dtype not in DATATYPES:
        tensor = tensor.float()
    return tensor.contiguous(), DATATYPES[tensor.dtype]


# ---- the Open Inference Protocol: numpy arrays in wire/'s layout ----


def from_wire(tensor: WireTensor) -> torch.Tensor:
    """A decoded input as a tensor, sharing the request body's memory."""
    array = tensor.array.load() if isinstance(tensor.array, SharedArray) else tensor.array
    result = torch.from_numpy(array)  # a read-only view of the request body, never written to (the filter above)
    return result.view(torch.bfloat16) if tensor.datatype == "BF16" else result


def to_wire(name: str, tensor: torch.Tensor) -> WireTensor:
    """An output as a wire tensor (a numpy view of the tensor's memory)."""
    ready, datatype = wire_ready(tensor)
    return WireTensor(name, datatype, (ready.view(torch.uint16) if datatype == "BF16" else ready).numpy())


# ---- /predict and /compare: tensor objects and nested lists ----


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
    expected = element_count(shape, dtype.itemsize) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"data_b64 holds {len(raw)} bytes; shape {shape} of {datatype} needs {expected}")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    # bytearray: the tensor handed out may be modified, so it gets writable memory of its own.
    return from_wire(WireTensor("", datatype, np.frombuffer(bytearray(raw), dtype=numpy_dtype(datatype)).reshape(shape)))


def to_torch(value: TensorObject | list[Any], position: int, expected_dtype: str | None = None) -> torch.Tensor:
    """Decode one request input. Nested lists take the model's input dtype (known from calibration)."""
    if isinstance(value, TensorObject):
        return _from_object(value, position)
    dtype = getattr(torch, expected_dtype, None) if expected_dtype else None
    try:
        return torch.tensor(value, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise TensorDecodeError(f"input {position}: not a rectangular nested list of numbers ({exc})") from None


def _from_object(tensor: TensorObject, position: int) -> torch.Tensor:
    where = f"input {position}" + (f" ({tensor.name})" if tensor.name else "")
    if tensor.data_b64 is not None:
        try:
            return from_b64(tensor.data_b64, tensor.datatype, tensor.shape)
        except ValueError as exc:
            raise TensorDecodeError(f"{where}: {exc}") from None
    try:
        count = element_count(tensor.shape, TORCH_DTYPES[tensor.datatype].itemsize)
    except ValueError as exc:
        raise TensorDecodeError(f"{where}: {exc}") from None
    if len(tensor.data) != count:
        raise TensorDecodeError(
            f"{where}: data has {len(tensor.data)} values but shape {tensor.shape} needs {count} (data is the flat, row-major list)"
        )
    try:
        return torch.tensor(tensor.data, dtype=TORCH_DTYPES[tensor.datatype]).reshape(tensor.shape)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise TensorDecodeError(f"{where}: data is not a flat list of {tensor.datatype} values ({exc})") from None


def to_object(name: str, tensor: torch.Tensor, binary: bool) -> TensorObject:
    tensor, datatype = wire_ready(tensor)
    shape = list(tensor.shape)
    if binary:
        return TensorObject.model_construct(name=name, shape=shape, datatype=datatype, data=None, data_b64=to_b64(tensor))
    return TensorObject.model_construct(name=name, shape=shape, datatype=datatype, data=tensor.reshape(-1).tolist(), data_b64=None)
