"""A model's routing policy (which variant answers a request that names none) and its fidelity guard.

Both are request bodies (PUT /models/{id}/routing and /guard), stored per model, and shown in its status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, model_validator

from .tolerance import STRICT, Tolerance

VariantName = Literal["original", "optimized"]
ROUTING_VERSION = 1
# The guard keeps at most this many requests of evidence per model.
MAX_WINDOW = 5000


# Strict: "0.5" or true for a share is a client's mistake to be told about, not coerced (a JSON
# integer still passes for a float); a version this server does not write is not a policy it can read.
class _Policy(BaseModel):
    model_config = STRICT
    version: int = Field(ROUTING_VERSION, ge=1, le=ROUTING_VERSION, description="format version of the stored policy")


class Pinned(_Policy):
    mode: Literal["pinned"] = "pinned"
    variant: VariantName


class Split(_Policy):
    mode: Literal["split"] = "split"
    optimized_share: float = Field(ge=0, le=1, description="share of requests the optimized variant answers")
    sample: float = Field(0.0, ge=0, le=1, description="share of requests also run on the variant that did not answer, to compare")


class Shadow(_Policy):
    mode: Literal["shadow"] = "shadow"
    serve: VariantName = "original"
    sample: float = Field(ge=0, le=1, description="share of requests also run on the other variant, after the answer")


RoutingPolicy = Annotated[Union[Pinned, Split, Shadow], Field(discriminator="mode")]


class Guard(BaseModel):
    """When live evidence says the optimized variant is unfaithful, route everything to the original."""

    model_config = STRICT
    version: int = Field(ROUTING_VERSION, ge=1, le=ROUTING_VERSION, description="format version of the stored guard")
    min_agreement: float | None = Field(None, gt=0, le=1, description="top-1 agreement with the original, over requests")
    # Not below 0: a floor under every cosine the outputs can show never trips, a guard in name only.
    min_cosine: float | None = Field(None, ge=0, le=1, description="mean cosine similarity of the outputs, over requests")
    window: int = Field(500, ge=10, le=MAX_WINDOW, description="the most recent compared requests the guard judges")
    enabled: bool = True

    @model_validator(mode="after")
    def _has_a_threshold(self) -> Guard:
        if self.enabled and self.min_agreement is None and self.min_cosine is None:
            raise ValueError("a guard needs min_agreement, min_cosine or both (or enabled: false)")
        return self


def describe_policy(policy: RoutingPolicy | None) -> str:
    """The policy in words: the reason of a routing event, and a line of the client's status."""
    if policy is None:
        return "no routing policy: the default variant serves"
    if isinstance(policy, Pinned):
        return f"all traffic to the {policy.variant} variant"
    if isinstance(policy, Split):
        compared = f", {policy.sample:.0%} also compared on the other" if policy.sample else ""
        return f"{policy.optimized_share:.1%} of traffic to the optimized variant{compared}"
    return f"the {policy.serve} variant serves; {policy.sample:.0%} of requests shadowed on the other"


def default_guard(config: dict[str, Any] | None, output_shapes: Sequence[Sequence[int]]) -> Guard:
    """The model's optimization tolerance, as a live guard (what the variant was chosen to keep): a
    model without a guard of its own is guarded by this."""
    class_scores = any(len(shape) == 1 and shape[0] > 1 for shape in output_shapes)
    tolerance = Tolerance.model_validate(config["tolerance"]) if config and config.get("tolerance") else None
    if tolerance is None:
        # As the search's default: agreement where there are class scores, and cosine always (an
        # embedding's argmax agrees while its direction drifts).
        return Guard(min_agreement=0.99 if class_scores else None, min_cosine=0.99)
    if tolerance.metric == "agreement":
        return Guard(min_agreement=tolerance.threshold)
    if tolerance.metric == "cosine":
        return Guard(min_cosine=tolerance.threshold)
    if tolerance.metric == "accuracy_drop" and class_scores:
        # Without live labels: a request whose top-1 agrees cannot lose accuracy, so disagreement bounds the drop.
        return Guard(min_agreement=max(0.5, 1 - tolerance.threshold))
    return Guard(min_cosine=0.99)
