"""Results of the Python client that are its own: tensors decoded to numpy arrays or torch tensors.

Everything else it returns is the server's own body, from the contract (wire.contract), read with
`read_answer`: fields a newer server adds are kept, not rejected."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from wire.contract.report import Fidelity

Body = TypeVar("Body", bound=BaseModel)


def read_answer(model: type[Body], data: Any) -> Body:
    """A server's answer as its contract model. extra="allow" reaches the nested models too, the
    strict ones (a routing policy, a guard) included: they are strict about what a client sends."""
    return model.model_validate(data, extra="allow")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True, protected_namespaces=())


class Prediction(_Lenient):
    model: str
    variant: str
    outputs: dict[str, Any]  # name -> torch.Tensor, in the model's output order
    inference_ms: float

    @property
    def output(self) -> Any:
        """The first (often the only) output tensor."""
        return next(iter(self.outputs.values()))


class Comparison(_Lenient):
    model: str
    outputs: dict[str, dict[str, Any]]  # variant -> output name -> torch.Tensor
    inference_ms: dict[str, float]
    fidelity: Fidelity
