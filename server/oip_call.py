"""An Open Inference Protocol infer request as it travels from the API server to a worker: decoded
and checked against the wire format, not yet against the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from wire import WireTensor


@dataclass
class InferCall:
    model: str
    variant: Union[str, None]
    inputs: list[WireTensor]
    request_id: Union[str, None]
    binary_outputs: Union[dict[str, bool], bool]
    requested_outputs: Union[list[str], None]
    routing_key: Union[str, None] = None  # the X-Routing-Key header: a sticky split
