"""Which variant answers a request that names none, by the model's routing policy (wire.contract.routing).

Policies and guards are stored per model (see server/store/) and read by the workers with every model
lookup, so a change, or a rollback by the guard, applies from the next batch on, in every worker.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from wire.contract.routing import Pinned, Shadow, Split


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
