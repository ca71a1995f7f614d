"""The routing rule, the default guard and the guard's verdict, as pure functions (the server tests run them live)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from server.live.window import judge, summarize
from server.live.routing import Route, choose
from wire.contract.live import LiveFidelity, LiveSample
from wire.contract.routing import Guard, Pinned, Shadow, Split, default_guard

BOTH = {"original", "optimized"}


def test_a_policy_never_routes_to_a_variant_that_does_not_exist():
    assert choose(Pinned(variant="optimized"), {"original"}, "original") == Route("original")
    assert choose(Split(optimized_share=1.0), {"original"}, "original") == Route("original")
    assert choose(Shadow(serve="original", sample=1.0), {"original"}, "original") == Route("original")
    assert choose(None, BOTH, "optimized") == Route("optimized")


def test_shadow_samples_the_other_variant_and_split_keys_are_sticky():
    random.seed(7)
    routes = [choose(Shadow(serve="optimized", sample=0.25), BOTH, "optimized") for _ in range(2000)]
    assert {r.serve for r in routes} == {"optimized"}
    assert 400 < sum(r.shadow == "original" for r in routes) < 600
    split = Split(optimized_share=0.5)
    for key in ("alice", "bob", "carol", "dave"):
        assert len({choose(split, BOTH, "optimized", key).serve for _ in range(20)}) == 1
    assert {choose(split, BOTH, "optimized", f"user-{i}").serve for i in range(50)} == BOTH


def test_the_default_guard_follows_the_optimization_tolerance():
    # A [N, 384] embedding looks like class scores (as it does to the pipeline's default tolerance);
    # cosine is required as well, and a user with embeddings sets min_cosine alone.
    classes, feature_map, embedding = [[10]], [[8, 4, 4]], [[384]]
    assert default_guard(None, classes) == Guard(min_agreement=0.99, min_cosine=0.99)
    assert default_guard(None, feature_map) == Guard(min_cosine=0.99)
    assert default_guard(_with_tolerance("agreement", 0.97), classes) == Guard(min_agreement=0.97)
    assert default_guard(_with_tolerance("cosine", 0.995), embedding) == Guard(min_cosine=0.995)
    assert default_guard(_with_tolerance("accuracy_drop", 0.02), classes) == Guard(min_agreement=0.98)


def _with_tolerance(metric: str, threshold: float) -> dict:
    """A stored config (its JSON, as the wire's ModelMeta holds it) with this tolerance."""
    return {"tolerance": {"metric": metric, "threshold": threshold}, "version": 2}


def compared(agreeing: int, disagreeing: int) -> list[LiveSample]:
    votes = [True] * agreeing + [False] * disagreeing
    return [LiveSample(revision=1, served="optimized", served_ms=1.0, other="original", other_ms=1.0, agree=vote, cosine=0.999) for vote in votes]


def verdict(agreeing: int, disagreeing: int, window: int = 500) -> str:
    guard = Guard(min_agreement=0.99, window=window)
    return summarize(compared(agreeing, disagreeing), 1, [], guard).guard.state


def test_the_guard_acts_on_evidence_of_a_worse_variant_not_on_too_little_evidence():
    assert verdict(10, 9) == "watching"  # fewer than 20 compared requests
    assert verdict(15, 5) == "tripped"  # 75% of 20: the upper bound is far below 0.99
    assert verdict(499, 1) == "ok"  # 99.8%: a lower-bound guard would have tripped here
    assert verdict(492, 8) == "tripped"  # a full window at 98.4%
    assert verdict(95, 2, window=500) == "ok"  # 97.9% of 97, window not full, upper bound above 0.99


def test_samples_of_an_older_routing_revision_are_not_judged():
    guard = Guard(min_agreement=0.99, window=100)
    status = summarize(compared(0, 50), revision=2, input_names=[], guard=guard)
    assert status.fidelity.compared == 0 and status.guard.state == "watching"
    assert judge(LiveFidelity(compared=0), Guard(min_cosine=0.9, enabled=False)).state == "off"


def test_served_and_shadow_latencies_are_kept_apart_by_clock():
    samples = [LiveSample(revision=1, served="optimized", served_ms=2.0, other="original", other_ms=4.0) for _ in range(10)]
    samples += [LiveSample(revision=1, served="original", served_ms=5.0) for _ in range(10)]
    status = summarize(samples, revision=1, input_names=[], guard=Guard(min_cosine=0.9))
    figures = {(entry.variant, entry.clock): entry.p50_ms for entry in status.latency}
    assert figures == {("optimized", "wall"): 2.0, ("original", "thread_cpu"): 4.0, ("original", "wall"): 5.0}
    assert status.speedup == 2.5  # served against served where both served: one clock


def test_a_guard_refuses_a_negative_cosine_and_a_string_or_bool_for_a_number():
    for bad in ({"min_cosine": -1}, {"min_cosine": "0.9"}, {"min_agreement": True}, {"min_cosine": 0.9, "version": 10**19}):
        with pytest.raises(ValidationError):
            Guard.model_validate(bad)
    assert Guard.model_validate_json('{"min_cosine": 1, "window": 100}').min_cosine == 1.0
