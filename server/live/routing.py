"""Which variant answers a request that names none: a model's routing policy and its fidelity guard.

Policies and guards are stored per model (see store.py) and read by the workers with every model
lookup, so a change, or a rollback by the guard, applies from the next batch on, in every worker.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

VariantName = Literal["original", "optimized"]
ROUTING_VERSION = 1
# The guard keeps at most this many requests of evidence per model.
MAX_WINDOW = 5000


# Strict: "0.5" or true for a share is a client's mistake to be told about, not coerced (a JSON
# integer still passes for a float); a version this server does not write is not a policy it can read.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class _Policy(BaseModel):
    model_config = _STRICT
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

    model_config = _STRICT
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


@dataclass(frozen=True)
class Route:
    serve: str
    shadow: str | None = None  # the variant to run as well, off the response path


def choose(policy: Pinned | Split | Shadow | None, available: set[str], default: str, key: str | None = None) -> Route:
    """The route of one request. Only variants that exist are chosen; a missing one falls back to the other."""
    if policy is None:
        return Route(default)
    if isinstance(policy, Pinned):
        return Route(policy.variant if policy.variant in available else default)
    if isinstance(policy, Split):
        serve = "optimized" if _bucket(key) < policy.optimized_share else "original"
        sample = policy.sample
    else:
        serve, sample = policy.serve, policy.sample
    if serve not in available:
        return Route(default)
    other = "original" if serve == "optimized" else "optimized"
    shadow = other if other in available and random.random() < sample else None
    return Route(serve, shadow)


def _bucket(key: str | None) -> float:
    """A number in [0, 1): the same for the same routing key in every process (Python's hash() is salted)."""
    if key is None:
        return random.random()
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
