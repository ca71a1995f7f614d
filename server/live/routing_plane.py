"""Routing management behind the routes: policies, guards, promotion, rollback, events and live status."""

from __future__ import annotations

import functools
import json

from wire.contract.models import ModelInfo, ModelStatus, RoutingEvent
from wire.contract.routing import Guard, Pinned, RoutingPolicy, Shadow, Split, describe_policy

from ..errors import ApiError, not_found
from .window import live_status
from ..store import Store, now


class RoutingPlane:
    def __init__(self, store: Store) -> None:
        self.store = store

    def status(self, ref: str) -> ModelStatus:
        info = self._model(ref)
        return ModelStatus(**info.model_dump(), live=live_status(self.store, info), stage_seconds=self._stage_seconds(info))

    def _stage_seconds(self, info: ModelInfo) -> dict[str, float] | None:
        path = self.store.file(info.id, "report.json") if info.state == "ready" else None
        if path is None:
            return None
        try:
            return _report_stage_seconds(str(path), path.stat().st_mtime_ns)
        except (OSError, ValueError):
            return None

    def set_routing(self, ref: str, policy: RoutingPolicy) -> ModelStatus:
        info = self._model(ref)
        if _needs_optimized(policy):
            _require_optimized(info, "route traffic to it")
        self.store.set_routing(info.id, policy.model_dump_json(), RoutingEvent(at=now(), kind="routing", trigger="user", reason=describe_policy(policy), routing=policy))
        return self.status(info.id)

    def set_guard(self, ref: str, guard: Guard) -> ModelStatus:
        info = self._model(ref)
        reason = "guard disabled" if not guard.enabled else f"guard set: {_describe_guard(guard)}"
        self.store.set_guard(info.id, guard, RoutingEvent(at=now(), kind="guard", trigger="user", reason=reason, guard=guard))
        return self.status(info.id)

    def promote(self, ref: str, reason: str) -> ModelStatus:
        info = self._model(ref)
        _require_optimized(info, "promote it")
        policy = Pinned(variant="optimized")
        event = RoutingEvent(at=now(), kind="promote", trigger="user", reason=reason or "promoted by hand", routing=policy)
        self.store.set_routing(info.id, policy.model_dump_json(), event)
        return self.status(info.id)

    def roll_back(self, ref: str, reason: str) -> ModelStatus:
        info = self._model(ref)
        policy = Pinned(variant="original")
        event = RoutingEvent(at=now(), kind="rollback", trigger="user", reason=reason or "rolled back by hand", routing=policy)
        self.store.set_routing(info.id, policy.model_dump_json(), event)
        return self.status(info.id)

    def events(self, ref: str, limit: int) -> list[RoutingEvent]:
        return self.store.events(self._model(ref).id, limit)

    def _model(self, ref: str) -> ModelInfo:
        info = self.store.get(ref)
        if info is None:
            raise not_found(ref)
        return info


def _describe_guard(guard: Guard) -> str:
    limits = [f"{name} >= {value}" for name, value in (("agreement", guard.min_agreement), ("cosine", guard.min_cosine)) if value is not None]
    return f"{' and '.join(limits)} over {guard.window} requests"


def _needs_optimized(policy: RoutingPolicy) -> bool:
    if isinstance(policy, Pinned):
        return policy.variant == "optimized"
    if isinstance(policy, Split):
        return policy.optimized_share > 0
    assert isinstance(policy, Shadow)
    return True  # serving it, or comparing against it


def _require_optimized(info: ModelInfo, purpose: str) -> None:
    """Refuse for a model whose optimization is over without an optimized variant (a queued one may still get one)."""
    if info.variant("optimized") is None and info.state in ("ready", "failed"):
        why = info.error if info.state == "failed" else (info.chosen.reason if info.chosen else "nothing qualified")
        raise ApiError(409, "variant_not_available", f"model {info.name!r} has no optimized variant to {purpose}: {why}")


@functools.lru_cache(maxsize=256)
def _report_stage_seconds(path: str, mtime_ns: int) -> dict[str, float] | None:
    """The report's per-stage times; cached per file version, as status is polled every half second."""
    with open(path, "rb") as handle:
        return json.load(handle).get("stage_seconds") or None
