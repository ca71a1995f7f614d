"""OIP datatype names and the numpy dtypes that hold them (little-endian, as on the wire).

numpy has no bfloat16: BF16 travels as its raw 16-bit patterns in a uint16 array, and whoever
computes with it (torch) reinterprets them.
"""

from __future__ import annotations

import numpy as np

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
# BF16 shares uint16's dtype: a uint16 array is UINT16 unless the sender says BF16.
_NAMES = {dtype: name for name, dtype in DATATYPES.items() if name != "BF16"}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}") from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP name of a numpy array's dtype (BF16 is never inferred: it needs saying)."""
    try:
        return _NAMES[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None
