"""What the inference workers make of each request: its record in a batch, its decoded inputs, and
its answer (an outcome) in the shape of the protocol it came by. Kept apart from the LitAPIs in
inference.py, which run the batches."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from optimizer_pipeline.outputs import NamedOutputs
from wire import WireTensor, encode_response
from wire.codec import Encoded
from wire.contract.models import ModelInfo

from .codec import wire_ready
from .errors import ApiError, error_body
from .oip_call import InferCall
from .routing import Route
from .schemas import CompareRequest
from .shared_tensors import SharedArray
from .tensors import TensorDecodeError, to_torch


@dataclass
class Outcome:
    """One request's answer; `model` and `variant` become headers so the API server can label metrics."""

    status: int
    body: dict[str, Any]
    model: str = ""
    variant: str = ""
    raw: Union[Encoded, None] = None  # an already encoded body (the protocol's)


@dataclass
class Pending:
    """A request of one group, with its decoded inputs."""

    position: int
    request: Union[CompareRequest, InferCall]
    inputs: tuple[torch.Tensor, ...] = ()
    outcome: Union[Outcome, None] = None
    casts: list[str] = field(default_factory=list)
    route: Union[Route, None] = None  # how the routing policy placed it (requests that named no variant)

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])

    def signature(self) -> tuple:
        return tuple((t.dtype, tuple(t.shape[1:])) for t in self.inputs)


@dataclass
class Ran:
    """Outputs of one forward call, split per request, with how long the call took."""

    outputs: dict[int, NamedOutputs] = field(default_factory=dict)
    milliseconds: dict[int, float] = field(default_factory=dict)



def request_tensors(info: ModelInfo, request: Union[CompareRequest, InferCall]) -> list[torch.Tensor]:
    """The request's inputs as tensors, in the order of the model's forward arguments."""
    expected = info.summary.inputs
    if isinstance(request, InferCall):
        by_name = {tensor.name: tensor for tensor in request.inputs}
        unknown = sorted(set(by_name) - set(expected))
        if unknown or len(by_name) != len(expected):
            raise TensorDecodeError(
                f"the model's inputs are {expected} ({expectation(info)}); the request has {[t.name for t in request.inputs]}"
            )
        return [from_wire(by_name[name]) for name in expected]
    if len(request.inputs) != len(expected):
        raise TensorDecodeError(f"the model takes {len(expected)} input(s) ({expectation(info)}), the request has {len(request.inputs)}")
    return [to_torch(value, position, info.summary.input_dtypes[position]) for position, value in enumerate(request.inputs)]


def from_wire(tensor: WireTensor) -> torch.Tensor:
    array = tensor.array.load() if isinstance(tensor.array, SharedArray) else tensor.array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only view of the request body; never written to
        result = torch.from_numpy(array)
    return result.view(torch.bfloat16) if tensor.datatype == "BF16" else result


def cast_to_model(tensor: torch.Tensor, dtype_name: str, name: str, casts: list[str]) -> torch.Tensor:
    """Real values to the model's real dtype, integers to its integer dtype (numpy hands out float64 and int64)."""
    expected = getattr(torch, dtype_name, None)
    if not isinstance(expected, torch.dtype) or tensor.dtype == expected:
        return tensor
    same_kind = (tensor.is_floating_point() and expected.is_floating_point) or (
        not tensor.is_floating_point() and not expected.is_floating_point and tensor.dtype != torch.bool and expected != torch.bool
    )
    if not same_kind:
        return tensor  # the model decides; a failure says what it expects
    casts.append(f"input {name}: {str(tensor.dtype).removeprefix('torch.')} -> {dtype_name}")
    return tensor.to(expected)


def infer_outcome(info: ModelInfo, variant: str, item: Pending, outputs: NamedOutputs, milliseconds: float) -> Outcome:
    call = item.request
    wanted = call.requested_outputs
    available = [name for name, _ in outputs]
    if wanted is not None and (missing := sorted(set(wanted) - set(available))):
        return Outcome(400, {"error": f"unknown output(s) {missing}; the model's outputs are {available}"}, info.name, variant)
    tensors = []
    for name, tensor in outputs:
        if wanted is None or name in wanted:
            ready, datatype = wire_ready(tensor)
            array = (ready.view(torch.uint16) if datatype == "BF16" else ready).numpy()
            tensors.append(WireTensor(name, datatype, array))
    parameters = {"inference_ms": milliseconds, **({"casts": "; ".join(item.casts)} if item.casts else {})}
    encoded = encode_response(info.name, variant, call.request_id, tensors, call.binary_outputs, parameters)
    return Outcome(200, {}, info.name, variant, raw=encoded)


def in_protocol(outcome: Outcome) -> Outcome:
    """Errors in the protocol's shape, `{"error": message}`, with its statuses."""
    if outcome.status == 200 or "error" not in outcome.body or not isinstance(outcome.body["error"], dict):
        return outcome
    error = outcome.body["error"]
    status = {"variant_not_available": 404, "variant_not_ready": 503, "invalid_input": 400}.get(error["code"], outcome.status)
    return Outcome(status, {"error": error["message"]}, outcome.model, outcome.variant)


def error_outcome(error: ApiError) -> Outcome:
    return Outcome(error.status, error_body(error.status, error.code, error.message))


def not_ready(info: ModelInfo, variant: str) -> ApiError:
    if info.state == "ready":
        reason = info.chosen.reason if info.chosen else "nothing qualified"
        return ApiError(409, "variant_not_available", f"model {info.name!r} has no {variant} variant: {reason}")
    if info.state == "failed":
        return ApiError(409, "variant_not_available", f"model {info.name!r} has no {variant} variant: optimization failed ({info.error})")
    return ApiError(409, "variant_not_ready", f"model {info.name!r} is {info.state} ({info.stage or 'waiting'}); its {variant} variant is not ready yet")


def expectation(info: ModelInfo) -> str:
    summary = info.summary
    return ", ".join(
        f"{name}: [N, {', '.join(map(str, shape))}] {dtype}" if shape else f"{name}: [N] {dtype}"
        for name, shape, dtype in zip(summary.inputs, summary.input_shapes, summary.input_dtypes)
    )


def example_inputs(info: ModelInfo) -> tuple[torch.Tensor, ...]:
    """One all-zero sample per input, shaped and typed like the calibration batch."""
    summary = info.summary
    return tuple(torch.zeros([1, *shape], dtype=getattr(torch, dtype)) for shape, dtype in zip(summary.input_shapes, summary.input_dtypes))


def check_batch_dimension(inputs: tuple[torch.Tensor, ...]) -> None:
    if any(t.dim() == 0 for t in inputs):
        raise TensorDecodeError("every input needs a batch dimension first (got a scalar)")
    sizes = {int(t.shape[0]) for t in inputs}
    if len(sizes) > 1:
        raise TensorDecodeError(f"inputs disagree on the batch size (first dimension): {sorted(sizes)}")
    if sizes == {0}:
        raise TensorDecodeError("the batch is empty (first dimension 0)")


def summary_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    # TorchScript puts a generic header first and the actual error ("RuntimeError: ...") last.
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    return line[:300]


# How an allocation refused by the address-space cap surfaces: torch's CPU allocator, C++ new, ONNX
# Runtime's and OpenVINO's allocators, Python.
OUT_OF_MEMORY_SIGNS = ("can't allocate memory", "Cannot allocate memory", "bad_alloc", "Failed to allocate memory")


def out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, MemoryError) or any(sign in str(exc) for sign in OUT_OF_MEMORY_SIGNS)


def forward_failed(info: ModelInfo, item: Pending, exc: Exception) -> Outcome:
    given = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in item.inputs)
    message = f"the model failed on inputs {given}; it expects {expectation(info)} ({summary_line(exc)})"
    return Outcome(422, error_body(422, "invalid_input", message), info.name)
