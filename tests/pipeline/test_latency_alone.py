"""Finalists timed alone: each variant in its own fresh process, taking turns, and the choice ranks on that."""

from __future__ import annotations

import os

import pytest

import tiny_models
from conftest import FAST
from optimizer_pipeline import jit, optimize
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.candidates import _record_alone, new_report
from optimizer_pipeline.measure.latency_alone import AloneMeasurement, Subject, _short_of_turns, time_alone, undisturbed
from optimizer_pipeline.passes import Plan, parse_pass_spec, run_pass


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
    # Two turns each, or up to four where a stalled process bought more (time_alone).
    assert len(measured[0]) == len(measured[1]) in (2, 3, 4) and all(m.median_ms > 0 for m in timed)
    assert len({m.pid for m in timed} | {os.getpid()}) == len(timed) + 1
    assert isinstance(measured[2], str) and "broken" in measured[2]


def test_the_choice_and_its_speedup_come_from_the_finalists_timed_alone():
    archive, inputs = tiny_models.cnn_bn()
    plans = [[{"pass": "freeze"}], [{"pass": "onnx_export"}], [{"pass": "onnx_export"}, {"pass": "ov_convert"}]]
    config = {**FAST, "latency": {**FAST["latency"], "processes": 2}, "min_speedup": 0.01, "candidates": [{"plan": p} for p in plans]}
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    # Every candidate is exact, so each is its runtime's fastest qualifying one: all three are finalists.
    for candidate in report.candidates:
        alone = candidate.timed_alone
        assert alone is not None and alone.processes == len(alone.original_ms) in (2, 3, 4), candidate.name
        assert candidate.speedup == alone.speedup == candidate.latency[-1].speedup
    chosen = report.candidate(report.chosen.candidate)
    assert report.chosen.speedup == chosen.timed_alone.speedup == max(c.speedup for c in report.candidates)


def test_a_stalled_process_counts_for_neither_the_original_nor_the_variant():
    # As seen on this 2-vCPU machine under load: whole processes of a TorchScript model at 24-36 ms a
    # call against 0.4 ms in the others. A median over three is the stall once two are hit.
    report = new_report("onnx_export", Plan([parse_pass_spec("onnx_export")]))
    report.latency = [None]  # replaced by the target batch's comparison
    _record_alone(report, 32, 20, original_ms=[24.0, 0.40, 36.0], candidate_ms=[0.20, 0.21, 0.62])
    assert report.speedup == report.timed_alone.speedup == report.latency[-1].speedup == pytest.approx(0.40 / 0.205)
    assert report.timed_alone.original_ms == [24.0, 0.40, 36.0]  # all kept in the report, for the record
    assert "3 stalled process(es) not counted" in report.notes[-1]


def test_a_variant_short_of_undisturbed_processes_buys_every_variant_another_turn():
    def timed(*medians: float) -> list[AloneMeasurement]:
        return [AloneMeasurement(m, pid) for pid, m in enumerate(medians)]

    assert undisturbed([0.4, 24.0, 0.5]) == [0.4, 0.5]
    assert not _short_of_turns([timed(1.0, 1.2, 1.1), timed(2.0, 2.1, 2.9), "could not be timed"], turns=3)
    assert _short_of_turns([timed(1.0, 1.2, 1.1), timed(2.0, 24.0, 2.2)], turns=3)
    assert not _short_of_turns([timed(1.0, 1.2, 1.1), timed(2.0, 24.0, 2.2, 2.1)], turns=3)
