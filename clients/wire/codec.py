"""Inference bodies <-> numpy, with the binary tensor data extension both ways.

A body is a JSON header, optionally followed by raw little-endian tensor bytes in the order of the
header's inputs (or outputs); `Inference-Header-Content-Length` says where the JSON ends. Binary
inputs are decoded as zero-copy views of the body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from .datatypes import datatype_of, numpy_dtype
from .schemas import MAX_DIMENSIONS, InferenceRequest, InferenceResponse

HEADER_LENGTH = "Inference-Header-Content-Length"


class WireError(ValueError):
    """The body does not follow the protocol; the message says what to fix (a 400)."""


# numpy refuses a shape whose non-zero sizes multiply past its byte range even when a zero size
# leaves the array empty: [0, 2**31, 2**31, 2**31] passed every size check, then raised a bare
# ValueError in reshape (a 500, and over gRPC an UNKNOWN). So every decoder asks element_count first.
MAX_ARRAY_BYTES = int(np.iinfo(np.intp).max)


def element_count(shape: Sequence[int], itemsize: int, where: str = "") -> int:
    """The number of elements in `shape` (a list, or protobuf's repeated field); WireError when no
    array can have that shape."""
    prefix = f"{where}: " if where else ""
    if len(shape) > MAX_DIMENSIONS:  # before copying the shape: a gRPC one may hold millions
        raise WireError(f"{prefix}the shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS}")
    shape = list(shape)
    if any(size < 0 for size in shape):
        raise WireError(f"{prefix}shape {shape} has a negative size")
    if math.prod(size for size in shape if size) * itemsize > MAX_ARRAY_BYTES:
        raise WireError(f"{prefix}shape {shape} describes more than {MAX_ARRAY_BYTES} bytes, which no array holds; give the shape of the data sent")
    return math.prod(shape)


@dataclass
class Encoded:
    """A body as its pieces: the JSON header, then each binary tensor's bytes (views, not copies)."""

    chunks: list[bytes | memoryview]
    headers: dict[str, str]

    @property
    def size(self) -> int:
        return sum(memoryview(chunk).nbytes for chunk in self.chunks)

    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class WireTensor:
    name: str
    datatype: str
    array: np.ndarray  # BF16 as uint16 bit patterns


def decode_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, list[WireTensor]]:
    header, binary = _split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise WireError(f"the inference request is not valid: {problems}") from None
    tensors = []
    offset = 0
    for item in request.inputs:
        where = f"input {item.name!r}"
        dtype = _dtype(item.datatype, where)
        count = element_count(item.shape, dtype.itemsize, where)
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
                raise WireError(f"{where}: binary_data_size is {size!r}; shape {item.shape} of {item.datatype} needs {count * dtype.itemsize} bytes")
            if offset + size > len(binary):
                raise WireError(f"{where}: the body ends {offset + size - len(binary)} bytes short of its binary data")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(item.shape)
            offset += size
        else:
            array = _from_json(item.data, item.datatype, dtype, item.shape, count, where)
        tensors.append(WireTensor(item.name, item.datatype, array))
    if offset != len(binary):
        raise WireError(f"the binary_data_size values add up to {offset} bytes, but {len(binary)} bytes follow the JSON header")
    return request, tensors


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Iterable[WireTensor],
    binary: Mapping[str, bool] | bool,
    parameters: dict[str, Any] | None = None,
) -> Encoded:
    """Outputs named in `binary` (or all, when True) travel as raw bytes after the JSON."""
    entries, parts = _tensor_entries(outputs, lambda name: binary if isinstance(binary, bool) else binary.get(name, False))
    document: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    return _encoded(document, parts)


def encode_request(
    inputs: Iterable[WireTensor], binary_inputs: bool = True, binary_outputs: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an inference request; every output is asked for, as binary or JSON."""
    entries, parts = _tensor_entries(inputs, lambda name: binary_inputs)
    document: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": binary_outputs}}
    if request_id is not None:
        document["id"] = request_id
    encoded = _encoded(document, parts)
    return encoded.body(), encoded.headers


def decode_response(body: bytes, header_length: str | None) -> tuple[InferenceResponse, list[WireTensor]]:
    header, binary = _split(body, header_length)
    response = InferenceResponse.model_validate_json(header)
    tensors, offset = [], 0
    for item in response.outputs:
        dtype = numpy_dtype(item.datatype)
        element_count(item.shape, dtype.itemsize, f"output {item.name!r}")
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(binary, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(item.shape)
            offset += size
        else:
            array = np.asarray(item.data, dtype=dtype).reshape(item.shape)
        tensors.append(WireTensor(item.name, item.datatype, array))
    return response, tensors


def wire_tensor(name: str, array: np.ndarray) -> WireTensor:
    """A numpy array as a named wire tensor, its datatype taken from its dtype."""
    array = np.asarray(array)
    return WireTensor(name, datatype_of(array), array)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise WireError(f"{HEADER_LENGTH} is {header_length!r}, not a byte count") from None
    if length == 0:
        raise WireError(f"{HEADER_LENGTH}: 0 (a raw binary body without a JSON header) is not supported; send the JSON header")
    if length < 0 or length > len(body):
        raise WireError(f"{HEADER_LENGTH} is {length}, but the body holds {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _dtype(datatype: str, where: str) -> np.dtype:
    try:
        return numpy_dtype(datatype)
    except ValueError as exc:
        raise WireError(f"{where}: {exc}") from None


def _from_json(data: list[Any] | None, datatype: str, dtype: np.dtype, shape: list[int], count: int, where: str) -> np.ndarray:
    if data is None:
        raise WireError(f"{where}: give `data`, or binary data with parameters.binary_data_size")
    if datatype == "BF16":
        raise WireError(f"{where}: BF16 has no JSON form; send it as binary data")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"{where}: data is not a list of {datatype} values ({exc})") from None
    if array.size != count:
        raise WireError(f"{where}: data holds {array.size} values; shape {shape} needs {count}")
    return array.reshape(shape)


def _dumps(document: dict[str, Any]) -> bytes:
    """JSON with numpy arrays as number lists. orjson writes them about 15x faster than json with
    tolist(), and float32 in its shortest exact form; but it writes NaN and Inf as null and knows no
    float16, so a document holding those goes through json (Python's NaN / Infinity dialect) instead."""
    arrays = [entry["data"] for key in ("inputs", "outputs") for entry in document.get(key, []) if "data" in entry]
    if all(array.dtype != np.float16 and (array.dtype.kind != "f" or np.isfinite(array).all()) for array in arrays):
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(document, separators=(",", ":"), default=lambda array: array.tolist()).encode()


def _tensor_entries(tensors: Iterable[WireTensor], as_binary: Callable[[str], bool]) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """The JSON entries of tensors, and the raw bytes of those that travel as binary (BF16 always: it has no JSON form)."""
    entries, parts = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.array.shape), "datatype": tensor.datatype}
        if as_binary(tensor.name) or tensor.datatype == "BF16":
            raw = memoryview(np.ascontiguousarray(tensor.array)).cast("B")
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            parts.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(tensor.array).reshape(-1)  # serialized by _join
        entries.append(entry)
    return entries, parts


def _encoded(document: dict[str, Any], parts: list[memoryview]) -> Encoded:
    header = _dumps(document)
    if not parts:
        return Encoded([header], {"Content-Type": "application/json"})
    return Encoded([header, *parts], {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})
