"""The Open Inference Protocol v2 adapter, for REST and gRPC alike.

An infer request travels from the API server to a worker as an `InferCall`: decoded and checked
against the wire format, not yet against the model; or, when its JSON is too large to parse in the
API server, as the raw body the worker decodes (`RawInfer`). Answers are the REST body (gRPC
splits it into raw output contents), and errors the protocol's `{"error": message}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Union

import torch

from wire import WireTensor, encode_response
from wire.codec import WireError, decode_request
from wire.contract.models import ModelInfo
from wire.schemas import InferenceRequest

from ...errors import ApiError
from ..outcomes import Outcome, Pending, Ran, Refused, expectation
from ..shared_tensors import SharedBytes
from ..tensors import TensorDecodeError, from_wire, to_wire

# Our error codes that the protocol answers with a status of its own.
STATUSES = {"variant_not_available": 404, "variant_not_ready": 503, "invalid_input": 400}


@dataclass
class InferCall:
    model: str
    variant: Union[str, None]
    inputs: list[WireTensor]
    request_id: Union[str, None]
    binary_outputs: Union[dict[str, bool], bool]
    requested_outputs: Union[list[str], None]
    routing_key: Union[str, None] = None  # the X-Routing-Key header: a sticky split

    @classmethod
    def of(cls, parsed: InferenceRequest, tensors: list[WireTensor], model: str, variant: Union[str, None], routing_key: Union[str, None]) -> "InferCall":
        return cls(
            model=model,
            variant=variant,
            inputs=tensors,
            request_id=parsed.id,
            binary_outputs=_binary_outputs(parsed),
            requested_outputs=[output.name for output in parsed.outputs] if parsed.outputs else None,
            routing_key=routing_key,
        )


def decode(body: bytes, header_length: Union[str, None], model: str, variant: Union[str, None], routing_key: Union[str, None]) -> InferCall:
    """A REST infer body as a call; WireError says what is wrong with it."""
    parsed, tensors = decode_request(body, header_length)
    return InferCall.of(parsed, tensors, model, variant, routing_key)


@dataclass
class RawInfer:
    """An infer body whose JSON part is too large to parse in the API server."""

    model: str
    variant: Union[str, None]
    data: Union[bytes, SharedBytes]
    header_length: Union[str, None]
    routing_key: Union[str, None] = None

    def decode(self) -> InferCall:
        """The call; WireError says what is wrong with the body."""
        body = self.data.read() if isinstance(self.data, SharedBytes) else self.data
        return decode(body, self.header_length, self.model, self.variant, self.routing_key)


def _binary_outputs(request: InferenceRequest) -> Union[dict[str, bool], bool]:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return default
    return {output.name: bool((output.parameters or {}).get("binary_data", default)) for output in request.outputs}


def error_message(body: bytes) -> str:
    """The message of an error answer read back (gRPC puts it in its status)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):  # our own shape, from a route outside /v2
        return str(error.get("message", error))
    return str(error if error is not None else document)


class OipAdapter:
    payloads = (InferCall, RawInfer)

    def parse(self, payload: Union[InferCall, RawInfer]) -> InferCall:
        if isinstance(payload, InferCall):
            return payload
        try:
            return payload.decode()
        except WireError as exc:
            raise Refused(Outcome(400, {"error": str(exc)})) from None

    def tensors(self, info: ModelInfo, request: InferCall) -> list[torch.Tensor]:
        expected = info.summary.inputs
        by_name = {tensor.name: tensor for tensor in request.inputs}
        unknown = sorted(set(by_name) - set(expected))
        if unknown or len(by_name) != len(expected):
            raise TensorDecodeError(f"the model's inputs are {expected} ({expectation(info)}); the request has {[t.name for t in request.inputs]}")
        return [from_wire(by_name[name]) for name in expected]

    def answer(self, info: ModelInfo, item: Pending, runs: dict[str, Ran]) -> Outcome:
        ((variant, ran),) = runs.items()
        outputs = ran.outputs[item.position]
        call = item.request
        wanted = call.requested_outputs
        available = [name for name, _ in outputs]
        if wanted is not None and (missing := sorted(set(wanted) - set(available))):
            return Outcome(400, {"error": f"unknown output(s) {missing}; the model's outputs are {available}"}, info.name, variant)
        tensors = [to_wire(name, tensor) for name, tensor in outputs if wanted is None or name in wanted]
        parameters = {"inference_ms": round(ran.milliseconds[item.position], 3), **({"casts": "; ".join(item.casts)} if item.casts else {})}
        encoded = encode_response(info.name, variant, call.request_id, tensors, call.binary_outputs, parameters)
        return Outcome(200, {}, info.name, variant, raw=encoded)

    def error(self, failure: ApiError, model: str) -> Outcome:
        return Outcome(STATUSES.get(failure.code, failure.status), {"error": failure.message}, model)


OIP = OipAdapter()
