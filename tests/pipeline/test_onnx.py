"""ONNX Runtime as a second runtime: exact exports, int8 within tolerance, nodes kept in float, and
ONNX variants going through optimize() like TorchScript ones."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import tiny_models
from conftest import FAST
from optimizer_pipeline import InvalidConfigError, jit, optimize, parse_config
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.runtimes.onnxruntime import OnnxModel
from optimizer_pipeline.passes import PassOutput, parse_pass_spec, run_pass
from optimizer_pipeline.runtimes import load_variant


def _export(model_name: str) -> tuple[jit.ScriptModule, PassOutput, Batch]:
    archive, inputs = tiny_models.ALL[model_name]()
    original = jit.load_archive(archive)
    batch = Batch(inputs)
    return original, run_pass(jit.reload(original), batch, parse_pass_spec("onnx_export")), batch


def _quantize_static(exported: OnnxModel, batch: Batch, **options) -> PassOutput:
    return run_pass(exported, batch, parse_pass_spec({"pass": "ort_quantize_static", **options}))


def _op_types(model: OnnxModel) -> dict[str, str]:
    return {node.name: node.op_type for node in model.proto().graph.node}


def _kernels_ort_runs(model: OnnxModel, directory: Path) -> list[str]:
    """Op types after ORT's own graph optimizations, where DQ→op→Q groups become int8 kernels."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(directory / "as_run.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.data, options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(directory / "as_run.onnx").graph.node]


@pytest.mark.parametrize("model_name", sorted(tiny_models.ALL))
def test_export_matches_torchscript_under_the_original_output_names(model_name: str):
    original, exported, batch = _export(model_name)
    assert exported.details["relative_error_by_batch"].keys() == {"1", "16"}
    assert max(exported.details["relative_error_by_batch"].values()) < 1e-5
    # The whole batch is neither of the sizes used to export and check: the batch axis is dynamic.
    variant = load_variant("onnxruntime", exported.model.data, threads=1)
    expected, got = run_model(original, batch), run_model(variant, batch)
    assert [name for name, _ in got] == [name for name, _ in expected]
    for (name, reference), (_, candidate) in zip(expected, got):
        torch.testing.assert_close(candidate, reference, rtol=1e-4, atol=1e-5, msg=name)


def test_scripted_control_flow_stays_a_branch_in_onnx():
    original, exported, _ = _export("gated_scripted")
    assert "If" in _op_types(exported.model).values()
    variant = load_variant("onnxruntime", exported.model.data, threads=1)
    positive = torch.rand(5, 12) + 0.1
    for x in (positive, -positive):  # one batch per branch
        torch.testing.assert_close(variant(x)["output"], original(x), rtol=1e-4, atol=1e-5)


def test_an_inexact_export_is_refused_with_its_numbers():
    archive, inputs = tiny_models.mlp()
    batch = Batch(inputs)
    # Quantized TorchScript exports, but not exactly (no plan may do this; a direct call can).
    quantized = run_pass(jit.load_archive(archive), batch, parse_pass_spec("quantize_static")).model
    with pytest.raises(ValueError, match="the ONNX export differs from the original at batch 1") as refused:
        run_pass(quantized, batch, parse_pass_spec("onnx_export"))
    assert "allowed 0.0001" in str(refused.value)


class RunningMax(torch.nn.Module):
    """aten::cummax has no ONNX export (opset 17)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, 1)[0]


def test_an_unexportable_model_fails_as_a_candidate_without_flooding_stdout(capfd: pytest.CaptureFixture[str]):
    x = torch.randn(8, 5)
    archive = jit.archive_bytes(torch.jit.trace(RunningMax(), x))
    result = optimize(archive, tiny_models.calibration_bytes((x,)), {**FAST, "plan": ["onnx_export"]})
    candidate = result.report.candidates[0]
    assert candidate.status == "failed" and candidate.failed_pass == "onnx_export"
    assert "aten::cummax" in candidate.error
    # torch.onnx dumps the whole IR graph to stdout on a failed export unless the pass stops it.
    assert "Torch IR graph" not in capfd.readouterr().out


def test_the_loader_uses_the_given_threads_and_does_not_spin():
    _, exported, _ = _export("mlp")
    options = load_variant("onnxruntime", exported.model.data, threads=1).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("calibrate_method", ["minmax", "entropy", "percentile"])
def test_static_int8_cnn_stays_within_tolerance(calibrate_method: str):
    original, exported, batch = _export("cnn_bn")
    quantized = _quantize_static(exported.model, batch, calibrate_method=calibrate_method)
    op_types = _op_types(exported.model)
    convs = {name for name, op in op_types.items() if op == "Conv"}
    assert convs and convs <= set(quantized.details["int8_nodes"])
    variant = load_variant("onnxruntime", quantized.model.data, threads=1)
    fidelity = compare_outputs(run_model(original, batch), run_model(variant, batch))
    assert fidelity.cosine >= 0.98 and fidelity.sqnr_db < 80, fidelity  # close, and really quantized


def test_op_types_limit_what_is_quantized():
    _, exported, batch = _export("cnn_bn")
    quantized = _quantize_static(exported.model, batch, op_types=["Gemm"])
    op_types = _op_types(exported.model)
    assert quantized.details["int8_nodes"]
    assert {op_types[name] for name in quantized.details["int8_nodes"]} == {"Gemm"}


@pytest.mark.parametrize(
    "model_name, op_type, int8_kernel",
    [("cnn_bn", "Conv", "QLinearConv"), ("residual", "Add", "QLinearAdd")],  # with a weight; without one
)
def test_excluded_nodes_run_in_float(model_name: str, op_type: str, int8_kernel: str, tmp_path: Path):
    _, exported, batch = _export(model_name)
    everything = _quantize_static(exported.model, batch)
    op_types = _op_types(exported.model)
    target = [name for name in everything.details["int8_nodes"] if op_types[name] == op_type][-1]
    kept = _quantize_static(exported.model, batch, nodes_to_exclude=[target])
    assert kept.details["float_nodes"] == [target] and target not in kept.details["int8_nodes"]
    kernels_before = _kernels_ort_runs(everything.model, tmp_path).count(int8_kernel)
    kernels_after = _kernels_ort_runs(kept.model, tmp_path)
    assert kernels_after.count(int8_kernel) == kernels_before - 1 and op_type in kernels_after


def test_the_most_sensitive_nodes_are_ranked_and_kept_in_float():
    _, exported, batch = _export("cnn_bn")
    everything = _quantize_static(exported.model, batch)
    fallback = _quantize_static(exported.model, batch, skip_sensitive=1)
    ranking = fallback.details["sensitivity"]
    errors = [error for _, error in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert [node for node, _ in ranking] != [] and {node for node, _ in ranking} == set(everything.details["int8_nodes"])
    worst = ranking[0][0]
    assert fallback.details["float_nodes"] == [worst] and worst not in fallback.details["int8_nodes"]


def test_an_onnx_plan_through_optimize_serves_an_onnx_file(tmp_path: Path):
    archive, inputs = tiny_models.mlp()
    config = {**FAST, "plan": ["onnx_export", "ort_quantize_dynamic"], "force": True}
    result = optimize(archive, tiny_models.calibration_bytes(inputs), config)
    candidate = result.report.candidates[0]
    assert candidate.status == "ok" and candidate.runtime == "onnxruntime", candidate.error
    assert candidate.details["1:ort_quantize_dynamic"]["integer_ops"] == {"MatMulInteger": 3}
    assert "ABBA" in candidate.details["0:onnx_export"]["timing"]
    assert result.report.chosen.runtime == result.optimized.runtime == "onnxruntime"
    assert result.optimized.filename == "optimized.onnx"
    written = {path.name for path in result.save(tmp_path)}
    assert "optimized.onnx" in written and "optimized.pt" not in written
    served = load_variant("onnxruntime", (tmp_path / "optimized.onnx").read_bytes(), threads=1)
    assert list(served(inputs[0][:3])) == ["output"]


@pytest.mark.parametrize(
    "plan, message",
    [
        (["onnx_export", "freeze"], "freeze (step 2) takes torchscript, but the model is onnx after onnx_export"),
        (["onnx_export", "onnx_export"], "onnx_export (step 2) takes torchscript, but the model is onnx after onnx_export"),
        (["ort_quantize_static"], "ort_quantize_static (step 1) takes onnx, but the model is torchscript as uploaded"),
    ],
)
def test_passes_in_the_wrong_order_are_refused_with_the_config(plan: list[str], message: str):
    with pytest.raises(InvalidConfigError, match="impossible plan") as refused:
        parse_config({"plan": plan})
    assert message in str(refused.value)


def test_dynamic_int8_keeps_its_most_sensitive_nodes_in_float():
    _, exported, batch = _export("mlp")
    gemms = [name for name, op in _op_types(exported.model).items() if op == "Gemm"]
    spec = {"pass": "ort_quantize_dynamic", "skip_sensitive": 1}
    fallback = run_pass(exported.model, batch, parse_pass_spec(spec))
    ranking = fallback.details["sensitivity"]
    # Ranked under the names quantize_dynamic gives the MatMul half of each Gemm it splits.
    assert {node for node, _ in ranking} == {f"{name}_MatMul" for name in gemms}
    errors = [error for _, error in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert fallback.details["float_nodes"] == [ranking[0][0]]
    # One of the three MatMulIntegers is gone: that node runs in float.
    assert fallback.details["integer_ops"] == {"MatMulInteger": len(gemms) - 1}
