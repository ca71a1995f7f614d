"""Request inputs (tensor objects or nested lists) -> torch, and outputs -> tensor objects."""

from __future__ import annotations

import math
from typing import Any

import torch

from .codec import TORCH_DTYPES, from_b64, to_b64, wire_ready
from ..http.schemas import TensorObject


class TensorDecodeError(ValueError):
    """An input cannot become a tensor; the message names the input and the problem."""


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
    count = math.prod(tensor.shape)
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
