"""The pipeline's eyes: fidelity metrics and interleaved latency."""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from optimizer_pipeline.measure.allocator import pin_malloc_thresholds
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.measure.latency import compare_latency


def test_identical_outputs_are_perfect():
    scores = torch.randn(16, 5)
    fidelity = compare_outputs([("logits", scores)], [("logits", scores.clone())])
    assert fidelity.agreement == 1.0 and fidelity.cosine == pytest.approx(1.0)
    assert math.isinf(fidelity.sqnr_db) and fidelity.max_abs_error == 0.0


def test_metrics_on_a_known_perturbation():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 3.0]])
    candidate = reference.clone()
    candidate[0] = torch.tensor([0.0, 1.0])  # flips the top-1 of sample 0, orthogonal to the reference
    fidelity = compare_outputs([("scores", reference)], [("scores", candidate)], labels=torch.tensor([0, 1, 0, 1]))
    assert fidelity.agreement == 0.75
    assert fidelity.cosine_min == pytest.approx(0.0, abs=1e-9)
    assert fidelity.cosine == pytest.approx(0.75)
    assert fidelity.max_abs_error == 1.0
    assert fidelity.sqnr_db == pytest.approx(10 * math.log10(17 / 2))
    assert fidelity.accuracy_original == 1.0 and fidelity.accuracy == 0.75 and fidelity.accuracy_drop == 0.25


def test_worst_output_decides_and_embeddings_get_no_agreement():
    embedding = torch.randn(8, 3, 4)
    noisy = embedding + 0.5 * torch.randn(8, 3, 4)
    fidelity = compare_outputs([("a", embedding), ("b", embedding)], [("a", embedding), ("b", noisy)])
    assert fidelity.agreement is None
    assert fidelity.cosine == pytest.approx(min(o.cosine_mean for o in fidelity.outputs))
    assert fidelity.outputs[0].cosine_mean == pytest.approx(1.0) and fidelity.outputs[1].cosine_mean < 0.99


def test_interleaved_latency_sees_the_faster_candidate():
    def slow() -> None:
        time.sleep(0.004)

    def fast() -> None:
        time.sleep(0.001)

    comparison = compare_latency(slow, fast, batch_size=4, warmup=1, rounds=6)
    assert comparison.original.runs == comparison.candidate.runs == 6
    assert comparison.original.median_ms >= 4.0 and comparison.candidate.median_ms >= 1.0
    assert comparison.speedup > 1.5
    assert comparison.original.p90_ms >= comparison.original.median_ms


def test_slow_models_get_fewer_rounds_within_max_seconds():
    def slow() -> None:
        time.sleep(0.02)

    comparison = compare_latency(slow, slow, batch_size=1, warmup=1, rounds=50, max_seconds=0.2)
    assert comparison.original.runs == 5  # 0.2 s / (2 x 20 ms) rounds, but never fewer than 5
    quick = compare_latency(lambda: None, lambda: None, batch_size=1, warmup=1, rounds=50, max_seconds=0.2)
    assert quick.original.runs == 50


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_thresholds_pin_on_glibc():
    # The pipeline and the inference workers both rely on this; a silent no-op would skew every speed-up.
    assert pin_malloc_thresholds()
    assert pin_malloc_thresholds()  # idempotent
