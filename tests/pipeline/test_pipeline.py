"""optimize() end to end: the choice rule, failures that don't stop it, the report, the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_models
from conftest import FAST
from optimizer_pipeline import Report, optimize
from optimizer_pipeline.choice import TIE_MARGIN, choose
from optimizer_pipeline.config import DEFAULT_CANDIDATES, CandidateSpec, PipelineConfig
from optimizer_pipeline.runtimes import load_variant
from wire.contract.report import CandidateReport, Fidelity

ROOT = Path(__file__).resolve().parents[2]


def _calibration(inputs) -> bytes:
    return tiny_models.calibration_bytes(inputs)


# The default search, cut short after its built-in single passes plus one cheap space trial (the
# space's fine-tuning and QAT trials take longer than a test should).
SHORT_SEARCH = {
    **FAST,
    "search": {
        "first": DEFAULT_CANDIDATES,
        "max_trials": len(DEFAULT_CANDIDATES) + 1,
        "space": {"prune": [{"pass": "prune_unstructured", "amount": 0.2}], "quantize": [{"pass": "quantize_dynamic"}]},
        "sensitive_fallback": False,
    },
}
BUILT_IN = {**FAST, "candidates": [{"plan": plan} for plan in DEFAULT_CANDIDATES]}


@pytest.mark.parametrize("model_name", sorted(tiny_models.ALL))
def test_optimize_completes_and_the_served_variant_runs(model_name: str, tmp_path: Path):
    archive, inputs = tiny_models.ALL[model_name]()
    result = optimize(archive, _calibration(inputs), SHORT_SEARCH)
    result.save(tmp_path)
    optimized = load_variant(result.served.runtime, (tmp_path / result.served.filename).read_bytes())
    with torch.inference_mode():
        optimized(*(t[:3] for t in inputs))
    report = Report.model_validate_json((tmp_path / "report.json").read_text())
    first = [CandidateSpec(plan=plan).display_name() for plan in DEFAULT_CANDIDATES]
    assert [c.name for c in report.candidates[: len(first)]] == first
    assert report.search.trials_run == len(first) + 1
    chosen = report.chosen
    if chosen.candidate == "original":
        assert result.kept_original and not (tmp_path / "optimized.pt").exists()
    else:
        winner = report.candidate(chosen.candidate)
        assert winner.meets_tolerance and winner.speedup >= report.min_speedup
        # The choice ranks the finalists, timed alone; other candidates' in-process figures do not compete.
        assert all(c.speedup <= winner.speedup * TIE_MARGIN for c in report.candidates if c.timed_alone)


def test_impossible_tolerance_serves_the_original_and_says_why():
    archive, inputs = tiny_models.residual()
    config = {**BUILT_IN, "tolerance": {"metric": "sqnr_db", "threshold": 1e9}}
    result = optimize(archive, _calibration(inputs), config)
    assert result.report.chosen.candidate == "original"
    assert result.kept_original and result.optimized is None and result.served.data == archive
    assert "no candidate" in result.report.chosen.reason and "sqnr_db" in result.report.chosen.reason


def test_impossible_speedup_serves_the_original():
    archive, inputs = tiny_models.mlp()
    result = optimize(archive, _calibration(inputs), {**BUILT_IN, "min_speedup": 1000})
    assert result.report.chosen.candidate == "original"
    assert "needs ≥ 1000.00x" in result.report.chosen.reason


class NoWeights(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


def test_a_failing_pass_is_recorded_and_the_rest_go_on():
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(NoWeights()), buffer)
    config = {**FAST, "candidates": [{"plan": [{"pass": "prune_unstructured"}]}, {"plan": [{"pass": "freeze"}]}]}
    result = optimize(buffer.getvalue(), _calibration((torch.randn(8, 5),)), config)
    failed, frozen = result.report.candidates
    assert failed.status == "failed" and failed.failed_pass == "prune_unstructured"
    assert "no Linear or Conv weights" in failed.error
    assert frozen.status == "ok" and frozen.fidelity.cosine == pytest.approx(1.0)


def test_force_serves_an_explicit_plan_outside_the_tolerance():
    archive, inputs = tiny_models.mlp()
    plan = [{"pass": "prune_unstructured", "amount": 0.9}]
    strict = {**FAST, "plan": plan, "tolerance": {"metric": "cosine", "threshold": 0.9999}}
    assert optimize(archive, _calibration(inputs), strict).report.chosen.candidate == "original"
    forced = optimize(archive, _calibration(inputs), {**strict, "force": True})
    assert forced.report.chosen.candidate.startswith("prune_unstructured")
    assert "OUTSIDE the tolerance" in forced.report.chosen.reason
    assert forced.optimized.data != archive


def test_labels_give_accuracy_and_calibration_sees_only_the_train_split():
    archive, inputs = tiny_models.cnn_bn(batch=40)
    labels = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    torch.save(labels, buffer)
    result = optimize(archive, _calibration(inputs), {**FAST, "plan": [{"pass": "quantize_static"}]}, labels=buffer.getvalue())
    report = result.report
    assert report.calibration.train_samples == 30 and report.calibration.held_out_samples == 10
    candidate = report.candidates[0]
    assert candidate.details["0:quantize_static"]["calibration_samples"] == 30
    assert candidate.fidelity.accuracy_original == pytest.approx(report.baseline_accuracy)
    assert candidate.fidelity.accuracy_drop == pytest.approx(candidate.fidelity.accuracy_original - candidate.fidelity.accuracy)


def test_latency_is_measured_at_batch_1_and_the_target_batch():
    archive, inputs = tiny_models.mlp(batch=20)
    result = optimize(archive, _calibration(inputs), {**FAST, "plan": ["freeze"], "batch_size": 8})
    candidate = result.report.candidates[0]
    assert [comparison.batch_size for comparison in candidate.latency] == [1, 8]
    # freeze is exact, so it is a finalist: at the target batch its figure is the one timed alone.
    assert all(c.original.runs == 3 and c.candidate.median_ms > 0 for c in candidate.latency)
    assert candidate.timed_alone.batch_size == 8 and candidate.latency[-1].speedup == candidate.timed_alone.speedup
    assert any(note.startswith("finalist: timed alone") for note in candidate.notes)
    assert result.report.batch_size == 8


def test_progress_is_reported_in_order():
    archive, inputs = tiny_models.mlp()
    seen: list[tuple[str, float]] = []
    optimize(archive, _calibration(inputs), SHORT_SEARCH, progress=lambda stage, fraction: seen.append((stage, fraction)))
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [stage for stage, _ in seen if stage.startswith("trial ")][:2] == ["trial 1: freeze", "trial 2: quantize_dynamic"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_optimize_writes_variants_and_prints_the_table(tmp_path: Path):
    archive, inputs = tiny_models.residual()
    (tmp_path / "model.pt").write_bytes(archive)
    (tmp_path / "calib.pt").write_bytes(_calibration(inputs))
    (tmp_path / "config.json").write_text(json.dumps(SHORT_SEARCH))
    done = _cli("optimize", str(tmp_path / "model.pt"), str(tmp_path / "calib.pt"), "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "quantize_static" in done.stdout and "chosen:" in done.stdout
    assert "trial 3: quantize_static" in done.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written in (
        ["optimized.pt", "original.pt", "report.html", "report.json"],
        ["optimized.onnx", "original.pt", "report.html", "report.json"],
        ["optimized.ovir", "original.pt", "report.html", "report.json"],  # OpenVINO may win too
        ["original.pt", "report.html", "report.json"],  # nothing qualified on this machine: the original is kept
    )


def test_cli_optimize_explains_a_bad_model(tmp_path: Path):
    (tmp_path / "model.pt").write_bytes(b"garbage")
    (tmp_path / "calib.pt").write_bytes(_calibration((torch.randn(4, 3),)))
    done = _cli("optimize", str(tmp_path / "model.pt"), str(tmp_path / "calib.pt"), "--out", str(tmp_path / "out"))
    assert done.returncode == 3  # ExitCode.INPUT
    assert "not a TorchScript archive" in done.stderr
    assert not (tmp_path / "out").exists()


def _qualifying(name: str, speedup: float, sqnr_db: float) -> CandidateReport:
    fidelity = Fidelity(samples=8, outputs=[], agreement=1.0, cosine=1.0, cosine_min=1.0, sqnr_db=sqnr_db, max_abs_error=0.0)
    return CandidateReport(name=name, plan=[], status="ok", fidelity=fidelity, speedup=speedup, meets_tolerance=True)


def test_a_near_tie_goes_to_the_more_faithful_candidate_and_the_reason_says_so():
    fast, faithful = _qualifying("fast", 1.37, 30.0), _qualifying("faithful", 1.34, 45.0)
    chosen = choose([fast, faithful], PipelineConfig())
    assert chosen.candidate == "faithful"
    assert "within 3% of the fastest" in chosen.reason and "(fast, 1.37x)" in chosen.reason
    clearly_faster = _qualifying("fast", 1.50, 30.0)
    chosen = choose([clearly_faster, faithful], PipelineConfig())
    assert chosen.candidate == "fast" and chosen.reason.startswith("fastest candidate within the tolerance")
