"""The unlabeled set (issue 21): uploaded over HTTP and the CLI, checked against the calibration
batch's layout and a size limit, stored with the model, and used by the job for distillation,
reconstruction and held-out certification; per-stage times in the report and the status; and the
default search trying compound (pruned) plans when the data can certify them."""

from __future__ import annotations

import io
import json

import pytest
import requests
import torch

import tiny_models
from clients.status_summary import status_summary
from optimizer_pipeline import optimize
from optimizer_pipeline.intake.calibration import load_calibration, load_unlabeled
from optimizer_pipeline.config import PipelineConfig
from optimizer_pipeline.errors import InvalidUnlabeledError
from optimizer_pipeline.fidelity.references import make_references
from optimizer_pipeline.search.compound import MIN_HELD_OUT, compound_plans
from optimizer_pipeline import jit
from server_harness import AUTH, FAST_LATENCY, FORCED_FREEZE, server_fixture, upload, wait_for
from cli_harness import run_cli
from wire.contract.models import ModelStatus

MAX_UNLABELED = 1_000_000
server = server_fixture({"OPTISERVE_MAX_UNLABELED_BYTES": str(MAX_UNLABELED)})
CNN_ARCHIVE, CNN_INPUTS = tiny_models.cnn_bn(48)
# Prune, then distil: both passes read the unlabeled set; an explicit plan keeps the job short.
PRUNE_AND_DISTIL = {
    "candidates": [{"plan": [{"pass": "prune_structured", "amount": 0.25}, {"pass": "finetune", "epochs": 2}]}],
    **FAST_LATENCY,
}


def unlabeled_bytes(count: int, shape: tuple[int, ...] = (3, 16, 16)) -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.randn(count, *shape, generator=torch.Generator().manual_seed(7)), buffer)
    return buffer.getvalue()


def post(url: str, unlabeled: bytes, config: dict, name: str) -> requests.Response:
    files = {
        "model": ("model.pt", CNN_ARCHIVE),
        "calibration": ("calibration.pt", tiny_models.calibration_bytes(CNN_INPUTS)),
        "unlabeled": ("unlabeled.pt", unlabeled),
    }
    return requests.post(url + "/models", files=files, data={"name": name, "config": json.dumps(config)}, headers=AUTH, timeout=60)


def test_an_unlabeled_set_is_stored_and_feeds_distillation_reconstruction_and_certification(server):
    response = post(server.url, unlabeled_bytes(200), PRUNE_AND_DISTIL, "with-unlabeled")
    assert response.status_code == 202, response.text
    model_id = response.json()["id"]
    assert (server.store / "models" / model_id / "unlabeled.bin").stat().st_size > 200 * 3 * 16 * 16 * 4
    status = wait_for(server.url, model_id)
    assert status["state"] == "ready", status
    assert status["has_unlabeled"] is True

    report = requests.get(f"{server.url}/models/{model_id}/report", timeout=10).json()
    used = report["calibration"]["unlabeled"]
    assert used == {"given": 200, "used": 200, "fitting": 100, "held_out": 100}
    # 12 of the 48 calibration samples are held out, and 100 unlabeled ones join them.
    assert report["calibration"]["held_out_samples"] == 112
    candidate = report["candidates"][0]
    assert candidate["fidelity"]["samples"] == 112
    assert candidate["details"]["1:finetune"]["unlabeled_samples"] == 100
    assert candidate["details"]["0:prune_structured"]["fitting_samples"]["unlabeled"] == 100


def test_per_stage_times_are_in_the_report_and_the_status(server):
    response = upload(server.url, CNN_ARCHIVE, CNN_INPUTS, name="stage-times", config=FORCED_FREEZE)
    assert response.status_code == 202, response.text
    status = wait_for(server.url, response.json()["id"])
    report = requests.get(f"{server.url}/models/{status['id']}/report", timeout=10).json()
    assert list(report["stage_seconds"])[:3] == ["loading", "measuring the original", "candidates"]
    assert all(seconds >= 0 for seconds in report["stage_seconds"].values())
    assert status["stage_seconds"] == report["stage_seconds"]
    assert "  stages: loading " in status_summary(ModelStatus.model_validate(status))


def test_an_unlabeled_set_in_another_layout_is_refused_naming_the_mismatch(server):
    response = post(server.url, unlabeled_bytes(20, shape=(3, 8, 8)), FORCED_FREEZE, "bad-layout")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_unlabeled"
    assert "per-sample shape [3, 8, 8]" in error["message"] and "[3, 16, 16]" in error["message"]
    assert requests.get(f"{server.url}/models/bad-layout", timeout=10).status_code == 404


def test_an_unlabeled_set_over_its_limit_is_refused_naming_the_setting(server):
    too_big = unlabeled_bytes(400)
    assert len(too_big) > MAX_UNLABELED
    response = post(server.url, too_big, FORCED_FREEZE, "too-big")
    assert response.status_code == 413, response.text
    assert "OPTISERVE_MAX_UNLABELED_BYTES" in response.json()["error"]["message"]
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_cli_optimize_takes_an_unlabeled_set(tmp_path):
    (tmp_path / "cnn.pt").write_bytes(CNN_ARCHIVE)
    (tmp_path / "calibration.pt").write_bytes(tiny_models.calibration_bytes(CNN_INPUTS))
    (tmp_path / "unlabeled.pt").write_bytes(unlabeled_bytes(40))
    (tmp_path / "config.json").write_text(json.dumps(FORCED_FREEZE))
    done = run_cli("optimize", str(tmp_path / "cnn.pt"), str(tmp_path / "calibration.pt"), "--unlabeled", str(tmp_path / "unlabeled.pt"),
                   "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["calibration"]["unlabeled"]["held_out"] == 20
    assert report["calibration"]["held_out_samples"] == 32
    assert "by stage: loading" in done.stdout


def test_the_unlabeled_layout_check_names_the_input_and_both_layouts():
    names = ["x"]
    batch = load_calibration(tiny_models.calibration_bytes(CNN_INPUTS), names)
    with pytest.raises(InvalidUnlabeledError, match=r"input 0 has per-sample shape \[3, 16, 16\] and dtype float64"):
        buffer = io.BytesIO()
        torch.save(torch.zeros(5, 3, 16, 16, dtype=torch.float64), buffer)
        load_unlabeled(buffer.getvalue(), names, batch)
    assert len(load_unlabeled(unlabeled_bytes(1), names, batch)) == 1  # any number of samples, one too


def test_compound_plans_wait_for_enough_held_out_samples():
    original = jit.load_archive(CNN_ARCHIVE)
    batch = load_calibration(tiny_models.calibration_bytes(CNN_INPUTS), ["x"])
    reference = make_references(original, batch, PipelineConfig(), threads=1)[0]
    decision = compound_plans([], reference, seconds_left=100.0)
    assert decision.plans == []
    assert f"at least {MIN_HELD_OUT}" in decision.note and "--unlabeled" in decision.note


def test_the_sensitivity_cost_counts_every_prunable_group_at_every_level():
    from optimizer_pipeline.channel_groups.allocation import LEVELS
    from optimizer_pipeline.search.compound import _sensitivity_cost

    original = jit.load_archive(CNN_ARCHIVE)
    batch = load_calibration(tiny_models.calibration_bytes(CNN_INPUTS), ["x"])
    reference = make_references(original, batch, PipelineConfig(), threads=1)[0]
    ticks = iter(range(100))
    groups, seconds = _sensitivity_cost([], reference, clock=lambda: float(next(ticks)))  # the analysis "takes" 1 s
    assert groups >= 1
    # Without a measured forward, each measurement costs two analyses' time (a reload and an analysis).
    assert seconds == groups * len(LEVELS) * 2.0


def test_the_default_search_tries_pruned_compound_plans_given_an_unlabeled_set():
    config = {
        # Cosine: int8 of this random-weight CNN keeps cosine ≥ 0.9998, but its top-1 of ten near-equal scores flips.
        "tolerance": {"metric": "cosine", "threshold": 0.99},
        "latency": {"rounds": 3, "warmup": 1, "processes": 1},
        "time_budget_seconds": 1800,  # a bound for a loaded machine, not the expected time
    }
    result = optimize(CNN_ARCHIVE, tiny_models.calibration_bytes(CNN_INPUTS), config=config, unlabeled=unlabeled_bytes(600))
    report = result.report
    assert report.search is not None and report.search.compound_note.startswith("compound plans tried"), report.search
    compound = [c for c in report.candidates if c.origin == "compound"]
    assert compound, [c.name for c in report.candidates]
    built = [c for c in compound if c.status == "ok"]
    assert built and all(c.plan[0]["pass"] == "prune_structured" and c.plan[0]["scope"] == "sensitivity" for c in compound)
    assert any(c.plan[-1]["pass"] in ("quantize_static", "ov_quantize", "ort_quantize_static") for c in built)
    assert report.calibration.held_out_samples >= MIN_HELD_OUT
    assert "trials" in report.stage_seconds
    # A conv model: the default search spends no first trial on dynamic int8.
    assert "dynamic int8" in report.search.first_note
    assert not any(c.plan[-1]["pass"].endswith("quantize_dynamic") for c in report.candidates if c.origin == "first")
