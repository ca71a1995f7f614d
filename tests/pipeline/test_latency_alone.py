"""Finalists timed alone: each variant in its own fresh process, taking turns, and the choice ranks on that."""

from __future__ import annotations

import os

import tiny_models
from conftest import FAST
from optimizer_pipeline import jit, optimize
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.measure.latency_alone import Subject, time_alone
from optimizer_pipeline.passes import parse_pass_spec, run_pass


def test_every_variant_is_timed_in_fresh_processes_of_its_own_and_a_broken_one_says_why():
    archive, inputs = tiny_models.mlp()
    exported = run_pass(jit.load_archive(archive), Batch(inputs), parse_pass_spec("onnx_export")).model
    subjects = [
        Subject("original", "torchscript", archive),
        Subject("onnx", "onnxruntime", exported.data),
        Subject("broken", "openvino", b"not an archive"),
    ]
    measured = time_alone(subjects, tuple(t[:8] for t in inputs), threads=1, warmup=1, calls=3, turns=2, timeout_s=60)
    timed = measured[0] + measured[1]
    assert len(timed) == 4 and all(m.median_ms > 0 for m in timed)
    assert len({m.pid for m in timed} | {os.getpid()}) == 5
    assert isinstance(measured[2], str) and "broken" in measured[2]


def test_the_choice_and_its_speedup_come_from_the_finalists_timed_alone():
    archive, inputs = tiny_models.cnn_bn()
    plans = [[{"pass": "freeze"}], [{"pass": "onnx_export"}], [{"pass": "onnx_export"}, {"pass": "ov_convert"}]]
    config = {**FAST, "latency": {**FAST["latency"], "processes": 2}, "min_speedup": 0.01, "candidates": [{"plan": p} for p in plans]}
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    # Every candidate is exact, so each is its runtime's fastest qualifying one: all three are finalists.
    for candidate in report.candidates:
        alone = candidate.timed_alone
        assert alone is not None and alone.processes == 2 and len(alone.original_ms) == 2, candidate.name
        assert candidate.speedup == alone.speedup == candidate.latency[-1].speedup
    chosen = report.candidate(report.chosen.candidate)
    assert report.chosen.speedup == chosen.timed_alone.speedup == max(c.speedup for c in report.candidates)
