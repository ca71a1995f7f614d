"""Our JSON protocol's adapter: POST /predict (one variant's outputs) and POST /compare (both, and their fidelity).

Bodies arrive parsed (small ones, in the API server) or as a `JsonBody` the worker parses; inputs are
tensor objects or nested lists; errors are our `{"error": {"status", "code", "message"}}`.
"""

from __future__ import annotations

from typing import Union

import torch

from optimizer_pipeline import compare_outputs
from wire.contract.models import ModelInfo

from ...errors import ApiError, error_body
from ..json_body import BodyError, JsonBody
from ..schemas import CompareRequest, CompareResponse, PredictRequest, PredictResponse
from ..outcomes import Outcome, Pending, Ran, Refused, expectation
from ..tensors import TensorDecodeError, to_object, to_torch


class PredictAdapter:
    schema: type[CompareRequest] = PredictRequest  # what a body the API server left unparsed must be

    def __init__(self) -> None:
        self.payloads: tuple[type, ...] = (self.schema, JsonBody)  # what its route puts on the queue

    def parse(self, payload: Union[CompareRequest, JsonBody]) -> CompareRequest:
        if not isinstance(payload, JsonBody):
            return payload
        try:
            return payload.parse(self.schema)
        except BodyError as error:
            raise Refused(Outcome(error.status, error.body)) from None

    def tensors(self, info: ModelInfo, request: CompareRequest) -> list[torch.Tensor]:
        expected = info.summary.inputs
        if len(request.inputs) != len(expected):
            raise TensorDecodeError(f"the model takes {len(expected)} input(s) ({expectation(info)}), the request has {len(request.inputs)}")
        return [to_torch(value, position, info.summary.input_dtypes[position]) for position, value in enumerate(request.inputs)]

    def answer(self, info: ModelInfo, item: Pending, runs: dict[str, Ran]) -> Outcome:
        ((variant, ran),) = runs.items()
        response = PredictResponse.model_construct(
            model=info.name,
            variant=variant,
            outputs=[to_object(name, t, item.request.binary_outputs) for name, t in ran.outputs[item.position]],
            inference_ms=round(ran.milliseconds[item.position], 3),
            casts=item.casts or None,
        )
        return Outcome(200, response.model_dump(mode="json", exclude_none=True), info.name, variant)

    def error(self, failure: ApiError, model: str) -> Outcome:
        return Outcome(failure.status, error_body(failure.status, failure.code, failure.message), model)


class CompareAdapter(PredictAdapter):
    schema = CompareRequest

    def answer(self, info: ModelInfo, item: Pending, runs: dict[str, Ran]) -> Outcome:
        outputs = {name: ran.outputs[item.position] for name, ran in runs.items()}
        binary = item.request.binary_outputs
        response = CompareResponse.model_construct(
            model=info.name,
            outputs={name: [to_object(n, t, binary) for n, t in named] for name, named in outputs.items()},
            inference_ms={name: round(ran.milliseconds[item.position], 3) for name, ran in runs.items()},
            fidelity=compare_outputs(outputs["original"], outputs["optimized"]),
        )
        return Outcome(200, response.model_dump(mode="json", exclude_none=True), info.name, "both")


PREDICT = PredictAdapter()
COMPARE = CompareAdapter()
