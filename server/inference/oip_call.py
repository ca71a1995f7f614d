"""An Open Inference Protocol infer request as it travels from the API server to a worker: decoded
and checked against the wire format, not yet against the model; or, when its JSON is too large to
parse in the API server, as the raw body the worker decodes (`RawInfer`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from wire import WireTensor
from wire.codec import decode_request
from wire.schemas import InferenceRequest

from .shared_tensors import SharedBytes


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
        parsed, tensors = decode_request(body, self.header_length)
        return InferCall.of(parsed, tensors, self.model, self.variant, self.routing_key)


def _binary_outputs(request: InferenceRequest) -> Union[dict[str, bool], bool]:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return default
    return {output.name: bool((output.parameters or {}).get("binary_data", default)) for output in request.outputs}
