"""OpenVINO as a third runtime: conversion from ONNX and from TorchScript, NNCF int8 with ops kept in
float, impossible plans refused when the config is parsed, and an OpenVINO variant served over HTTP."""

from __future__ import annotations

import gc
import numpy as np
import pytest
import requests
import torch

import tiny_models
from conftest import FAST
from optimizer_pipeline import InvalidConfigError, jit, optimize, parse_config
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.passes import PassOutput, parse_pass_spec, run_pass
from optimizer_pipeline.runtimes.cpu import cpu_has_bf16
from optimizer_pipeline.runtimes import load_variant, load_variant_file
from optimizer_pipeline.runtimes.openvino import OpenVinoModel, precision_of
from server_harness import FAST_LATENCY, predict, server_fixture, upload, wait_for
from wire.report_text.table import format_report

server = server_fixture()

OV_INT8 = [{"pass": "onnx_export"}, {"pass": "ov_convert"}, {"pass": "ov_quantize"}]


def _convert(model_name: str, via_onnx: bool) -> tuple[jit.ScriptModule, PassOutput, Batch]:
    archive, inputs = tiny_models.ALL[model_name]()
    original, batch = jit.load_archive(archive), Batch(inputs)
    model = jit.reload(original)
    if via_onnx:
        model = run_pass(model, batch, parse_pass_spec("onnx_export")).model
    return original, run_pass(model, batch, parse_pass_spec("ov_convert")), batch


@pytest.mark.parametrize("via_onnx", [True, False], ids=["from-onnx", "from-torchscript"])
@pytest.mark.parametrize("model_name", ["cnn_bn", "two_inputs", "dict_output"])
def test_conversion_matches_torchscript_under_the_original_names_at_any_batch(model_name: str, via_onnx: bool, tmp_path):
    original, converted, batch = _convert(model_name, via_onnx)
    assert converted.details["source"] == ("onnx" if via_onnx else "torchscript")
    variant = load_variant("openvino", converted.model.data, threads=1)
    expected, got = run_model(original, batch), run_model(variant, batch)  # the whole batch: neither size checked
    assert [name for name, _ in got] == [name for name, _ in expected]
    for (name, reference), (_, candidate) in zip(expected, got):
        torch.testing.assert_close(candidate, reference, rtol=1e-4, atol=1e-5, msg=name)
    # As a worker loads it: from the stored file, its weights used in place. Loaded, dropped and
    # loaded again, it still answers the same (the buffer must live as long as the compiled model).
    stored = tmp_path / "variant.ov"
    stored.write_bytes(converted.model.data)
    for _ in range(2):
        from_file = run_model(load_variant_file("openvino", stored, threads=1), batch)
        gc.collect()
        for (name, reference), (_, candidate) in zip(got, from_file):
            torch.testing.assert_close(candidate, reference, rtol=0, atol=0, msg=name)


def test_precision_is_the_plans_choice_and_the_stored_variant_keeps_it():
    archive, inputs = tiny_models.cnn_bn()
    batch = Batch(inputs)
    for precision in ("f32", "bf16"):
        converted = run_pass(jit.load_archive(archive), batch, parse_pass_spec({"pass": "ov_convert", "precision": precision}))
        # Conversion parity is checked in f32 either way; bf16 is left to the fidelity check.
        assert max(converted.details["relative_error_by_batch"].values()) < 1e-4
        assert precision_of(OpenVinoModel(converted.model.data).read()) == precision  # the stored IR keeps the choice
        compiled = load_variant("openvino", converted.model.data, threads=1).compiled
        # OpenVINO compiles bf16 only where the CPU has it (elsewhere it falls back to f32 itself).
        computes_bf16 = precision == "bf16" and cpu_has_bf16()
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == ("<Type: 'bfloat16'>" if computes_bf16 else "<Type: 'float32'>")


def test_nncf_int8_quantizes_a_cnn_within_tolerance_and_keeps_sensitive_ops_in_float():
    original, converted, batch = _convert("cnn_bn", via_onnx=True)
    reference = run_model(original, batch)
    quantized = run_pass(converted.model, batch, parse_pass_spec("ov_quantize"))
    assert quantized.details["int8_ops"] > 0 and quantized.details["model_type"] == "other"
    assert compare_outputs(reference, run_model(load_variant("openvino", quantized.model.data, 1), batch)).cosine > 0.98

    fallback = run_pass(converted.model, batch, parse_pass_spec({"pass": "ov_quantize", "skip_sensitive": 1}))
    ranking = fallback.details["sensitivity"]
    assert len(ranking) == quantized.details["int8_ops"]
    assert fallback.details["float_nodes"] == [ranking[0][0]]
    assert fallback.details["int8_ops"] < quantized.details["int8_ops"]


def test_an_attention_model_is_quantized_as_a_transformer():
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.0).eval()
    tokens = torch.randn(24, 5, 16)
    with jit.quiet_torch():
        archive = jit.archive_bytes(torch.jit.trace(model, (tokens[:2],), check_trace=False))
    batch = Batch((tokens,))
    converted = run_pass(jit.load_archive(archive), batch, parse_pass_spec("ov_convert")).model
    details = run_pass(converted, batch, parse_pass_spec("ov_quantize")).details
    assert (details["model_type"], details["preset"]) == ("transformer", "mixed")


@pytest.mark.parametrize(
    "plan, problem",
    [
        ([{"pass": "onnx_export"}, {"pass": "ov_convert"}, {"pass": "quantize_static"}], "takes torchscript, but the model is openvino"),
        ([{"pass": "ov_quantize"}], "takes openvino, but the model is torchscript as uploaded"),
        ([{"pass": "ov_convert"}, {"pass": "ov_quantize"}, {"pass": "ov_quantize"}], "nothing may follow ov_quantize"),
    ],
)
def test_an_impossible_plan_is_refused_when_the_config_is_parsed(plan: list[dict], problem: str):
    with pytest.raises(InvalidConfigError, match="impossible plan") as refused:
        parse_config({"plan": plan})
    assert problem in str(refused.value)
    with pytest.raises(InvalidConfigError, match="impossible plan"):
        parse_config({"candidates": [{"plan": [{"pass": "freeze"}]}, {"plan": plan}]})


def test_the_report_names_the_runtime_of_every_candidate():
    archive, inputs = tiny_models.mlp()
    plans = [[{"pass": "freeze"}], [{"pass": "onnx_export"}], [{"pass": "onnx_export"}, {"pass": "ov_convert"}], OV_INT8]
    report = optimize(archive, tiny_models.calibration_bytes(inputs), {**FAST, "candidates": [{"plan": p} for p in plans]}).report
    assert [c.runtime for c in report.candidates] == ["torchscript", "onnxruntime", "openvino", "openvino"]
    assert all(c.status == "ok" for c in report.candidates), [c.error for c in report.candidates]
    rows = format_report(report).splitlines()
    for candidate in report.candidates:
        assert any(candidate.name in row and candidate.runtime in row for row in rows), candidate.name


def test_an_openvino_variant_serves_through_predict_and_v2(server):
    archive, inputs = tiny_models.two_inputs()
    config = {"plan": [{"pass": "ov_convert"}], "force": True, **FAST_LATENCY}
    model_id = upload(server.url, archive, inputs, name="via-ov", config=config).json()["id"]
    status = wait_for(server.url, model_id)
    assert status["state"] == "ready", status
    assert {v["name"]: v["runtime"] for v in status["variants"]} == {"original": "torchscript", "optimized": "openvino"}
    image, meta = inputs[0][:3], inputs[1][:3]
    expected = tiny_models.local_forward(archive, image, meta)
    answer = predict(server.url, "via-ov", image, meta)
    assert answer.status_code == 200 and answer.json()["variant"] == "optimized", answer.text
    got = [torch.tensor(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]]
    for got_one, want in zip(got, expected):
        torch.testing.assert_close(got_one, want, rtol=1e-4, atol=1e-4)

    body = {"inputs": [
        {"name": name, "shape": list(t.shape), "datatype": "FP32", "data": t.reshape(-1).tolist()}
        for name, t in (("image", image), ("meta", meta))
    ]}
    v2 = requests.post(f"{server.url}/v2/models/via-ov/versions/optimized/infer", json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    outputs = v2.json()["outputs"]
    for output, want in zip(outputs, expected):
        np.testing.assert_allclose(np.array(output["data"]).reshape(output["shape"]), want.numpy(), rtol=1e-4, atol=1e-4)


def test_an_impossible_plan_gets_a_422(server):
    archive, inputs = tiny_models.mlp()
    refused = upload(server.url, archive, inputs, name="impossible", config={"plan": [{"pass": "ov_convert"}, {"pass": "quantize_dynamic"}]})
    assert refused.status_code == 422, refused.text
    assert "impossible plan" in refused.text and "quantize_dynamic" in refused.text
