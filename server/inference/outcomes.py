"""What the inference workers make of each request: its record in a batch, its decoded inputs, and
its answer (an outcome); and `Adapter`, what a protocol's adapter (adapters/) does for the workers.
Kept apart from the LitAPIs in worker.py, which run the batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import torch

from optimizer_pipeline import NamedOutputs
from wire.codec import Encoded
from wire.contract.models import ModelInfo

from ..errors import ApiError
from ..live.routing import Route
from .tensors import TensorDecodeError


@dataclass
class Outcome:
    """One request's answer; `model` and `variant` become headers so the API server can label metrics."""

    status: int
    body: dict[str, Any]
    model: str = ""
    variant: str = ""
    raw: Union[Encoded, None] = None  # an already encoded body (the protocol's)


class Refused(Exception):
    """A body its adapter could not parse: `outcome` is the answer, in its protocol's shape."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.status)
        self.outcome = outcome


class Adapter(Protocol):
    """One protocol in front of the workers: which payloads are its, their inputs as tensors, and
    the answer (or failure) in its shape. A request it hands on has `model`, `variant` (or none)
    and `routing_key`."""

    payloads: tuple[type, ...]  # what its routes put on the queue

    def parse(self, payload: Any) -> Any:
        """The request a payload carries; Refused if its body is not one."""

    def tensors(self, info: ModelInfo, request: Any) -> list[torch.Tensor]:
        """The inputs in the order of the model's forward arguments; TensorDecodeError says what is wrong."""

    def answer(self, info: ModelInfo, item: Pending, runs: dict[str, Ran]) -> Outcome:
        """The answer of a request that ran (`runs`: its outputs per variant)."""

    def error(self, failure: ApiError, model: str) -> Outcome:
        """A failure (`model`: the model's name, when known) in the protocol's shape."""


@dataclass
class Pending:
    """A request of one group, with its decoded inputs."""

    position: int
    request: Any  # what its adapter parsed
    adapter: Adapter
    inputs: tuple[torch.Tensor, ...] = ()
    outcome: Union[Outcome, None] = None
    casts: list[str] = field(default_factory=list)
    route: Union[Route, None] = None  # how the routing policy placed it (requests that named no variant)

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])

    def signature(self) -> tuple:
        return tuple((t.dtype, tuple(t.shape[1:])) for t in self.inputs)

    def fail(self, failure: ApiError, model: str = "") -> None:
        self.outcome = self.adapter.error(failure, model)


@dataclass
class Ran:
    """Outputs of one forward call, split per request, with how long the call took."""

    outputs: dict[int, NamedOutputs] = field(default_factory=dict)
    milliseconds: dict[int, float] = field(default_factory=dict)



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
    # TorchScript puts a generic header first and the actual error ("RuntimeError: ...") last, or
    # just before the Python stack ("At:") of an error a Python kernel raised.
    if lines[0].startswith("The following operation failed"):
        lines = lines[: lines.index("At:")] if "At:" in lines else lines
        line = lines[-1]
    else:
        line = lines[0]
    return line[:300]


# How an allocation refused by the address-space cap surfaces: torch's CPU allocator, C++ new, ONNX
# Runtime's and OpenVINO's allocators, Python.
OUT_OF_MEMORY_SIGNS = ("can't allocate memory", "Cannot allocate memory", "bad_alloc", "Failed to allocate memory")


def out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, MemoryError) or any(sign in str(exc) for sign in OUT_OF_MEMORY_SIGNS)


def forward_failed(info: ModelInfo, item: Pending, exc: Exception) -> ApiError:
    given = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in item.inputs)
    return ApiError(422, "invalid_input", f"the model failed on inputs {given}; it expects {expectation(info)} ({summary_line(exc)})")
