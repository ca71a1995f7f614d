"""ModelInfer tensors <-> the wire format the REST side and the workers already speak.

Inputs become WireTensors (zero-copy views of `raw_input_contents`). Outputs arrive as the workers'
encoded REST answer (a JSON header followed by raw bytes, every output binary); they are split into
`raw_output_contents` (one copy: protobuf bytes fields own their data).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from wire import WireError, WireTensor, decode_response, numpy_dtype
from wire.codec import HEADER_LENGTH, element_count
from wire.schemas import MAX_INPUTS

# The typed `contents` field of each datatype (the protocol's alternative to raw bytes); FP16 and
# BF16 have none and must travel raw.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def request_tensors(request: pb.ModelInferRequest) -> list[WireTensor]:
    """The request's inputs; WireError says what does not fit (INVALID_ARGUMENT)."""
    if len(request.inputs) > MAX_INPUTS:
        raise WireError(f"the request has {len(request.inputs)} inputs; at most {MAX_INPUTS}")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise WireError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, in order")
    tensors = []
    for position, item in enumerate(request.inputs):
        where = f"input {item.name!r}"
        try:
            dtype = numpy_dtype(item.datatype)
        except ValueError as exc:
            raise WireError(f"{where}: {exc}") from None
        count = element_count(item.shape, dtype.itemsize, where)
        shape = list(item.shape)
        if raw:
            data = raw[position]
            if len(data) != count * dtype.itemsize:
                raise WireError(f"{where}: raw_input_contents holds {len(data)} bytes; shape {shape} of {item.datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
        else:
            array = _from_contents(item, dtype, count, shape, where)
        tensors.append(WireTensor(item.name, item.datatype, array))
    return tensors


def _from_contents(item: Any, dtype: np.dtype, count: int, shape: list[int], where: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(item.datatype)
    if field is None:
        raise WireError(f"{where}: {item.datatype} has no typed contents field; send it in raw_input_contents")
    values = getattr(item.contents, field)
    if len(values) != count:
        raise WireError(f"{where}: contents.{field} holds {len(values)} values; shape {shape} needs {count}")
    try:
        return np.fromiter(values, dtype=dtype, count=count).reshape(shape)  # twice asarray's speed on a repeated field
    except OverflowError as exc:
        raise WireError(f"{where}: a value does not fit {item.datatype} ({exc})") from None


def infer_response(body: bytes, headers: Any) -> pb.ModelInferResponse:
    """The workers' REST answer (status 200) as a ModelInferResponse with raw output contents."""
    parsed, tensors = decode_response(body, headers.get(HEADER_LENGTH))
    response = pb.ModelInferResponse(model_name=parsed.model_name, model_version=parsed.model_version or "", id=parsed.id or "")
    for name, value in (parsed.parameters or {}).items():
        _set_parameter(response.parameters[name], value)
    for tensor in tensors:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(tensor.array).tobytes())
    return response


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def parameter_value(parameter: pb.InferParameter) -> Any:
    """An InferParameter's value, whichever field it uses."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None
