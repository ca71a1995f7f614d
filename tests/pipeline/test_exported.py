"""torch.export uploads (.pt2): programs exported in the test itself load with a dynamic batch, are
optimized (the program serving as the original) and served over HTTP; hostile archives are refused
before any of their code runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch

import exported_models
import tiny_models
from conftest import FAST
from optimizer_pipeline import InvalidModelError, UnsafeModelError, load_model, optimize
from optimizer_pipeline.fidelity.outputs import flatten_outputs
from optimizer_pipeline.runtimes import load_variant
from server_harness import AUTH, REPO, server_fixture, wait_for

server = server_fixture()
FREEZE = {"plan": [{"pass": "freeze"}], "force": True, **FAST}


@pytest.fixture(scope="module")
def programs() -> dict:
    return {name: build() for name, build in exported_models.ALL.items()}


def _tensors(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


@pytest.mark.parametrize("name", sorted(exported_models.ALL))
def test_a_program_loads_as_a_stand_in_that_matches_it_at_any_batch_size(programs, name):
    archive, model, inputs = programs[name]
    stand_in = load_model(archive)
    for batch in (1, 5, 32):
        sample = tuple(t[:batch] for t in inputs)
        with torch.no_grad():
            expected, got = _tensors(model(*sample)), _tensors(stand_in(*sample))
        assert all(torch.allclose(e, g, atol=1e-5) for e, g in zip(expected, got, strict=True))


def test_a_size_the_program_makes_from_the_batch_follows_it_in_the_stand_in():
    # The LSTM's zero state is made from the batch size: baked in at the traced batch, a bigger batch
    # would run aten.lstm past the state's buffer (it does not check), corrupting the heap.
    archive, model, inputs = exported_models.lstm()
    stand_in = load_model(archive)
    assert "aten::size" in {node.kind() for node in stand_in.inlined_graph.nodes()}
    for batch in (1, 5, 32):
        sample = tuple(t[:batch] for t in inputs)
        with torch.no_grad():
            assert torch.allclose(model(*sample), stand_in(*sample), atol=1e-5)


def test_optimizing_a_program_keeps_the_program_itself_as_the_original(programs, tmp_path: Path):
    archive, model, inputs = programs["residual"]
    result = optimize(archive, tiny_models.calibration_bytes(inputs), FREEZE)
    assert result.original.runtime == "exported" and result.original.data == archive
    assert result.report.model.format == "exported"
    assert result.optimized.runtime == "torchscript"  # the forced freeze of the stand-in
    freeze = next(c for c in result.report.candidates if c.name != "original")
    assert any("TorchScript stand-in" in note for note in freeze.notes)
    served = load_variant("exported", result.original.data)
    with torch.no_grad():
        assert torch.allclose(served(inputs[0][:3]), model(inputs[0][:3]), atol=1e-5)
    result.save(tmp_path)
    assert (tmp_path / "original.pt2").read_bytes() == archive


@pytest.mark.parametrize("name", sorted(exported_models.ALL))
@pytest.mark.parametrize("conversion", ["ov_convert", "onnx_export"])
def test_onnx_and_openvino_convert_the_program_itself_and_serve_what_the_eager_model_computes(programs, name, conversion):
    archive, model, inputs = programs[name]
    config = {"plan": [{"pass": conversion}], "force": True, **FAST}
    result = optimize(archive, tiny_models.calibration_bytes(inputs), config)
    candidate = next(c for c in result.report.candidates if c.name != "original")
    assert candidate.status == "ok", candidate.error
    assert candidate.details[f"0:{conversion}"]["source"] == "torch.export program"
    assert f"{conversion} converted the torch.export program itself" in candidate.notes
    served = load_variant(result.optimized.runtime, result.optimized.data)
    for batch in (1, 7):
        sample = tuple(t[:batch] for t in inputs)
        with torch.no_grad():
            expected, got = flatten_outputs(model(*sample)), flatten_outputs(served(*sample))
        assert len(expected) == len(got) and all(torch.allclose(e, torch.as_tensor(g), atol=1e-4, rtol=1e-4) for (_, e), (_, g) in zip(expected, got))


# ---- hostile archives: refused, and none of their code runs ----


def test_a_tampered_pickled_member_is_refused_without_unpickling_it(programs, tmp_path: Path):
    marker = tmp_path / "unpickled"
    archive = exported_models.with_pickled_sample_inputs(programs["cnn_bn"][0], str(marker))
    with pytest.raises(UnsafeModelError, match="sample inputs are a pickle"):
        load_model(archive)
    assert not marker.exists()
    with pytest.raises(UnsafeModelError, match="pickled object"):
        load_model(exported_models.with_pickled_weights(programs["cnn_bn"][0]))


@pytest.mark.parametrize(
    "target, named",
    [
        ("torch.ops.aten.from_file.default", "aten.from_file"),
        ("torch.ops.aten._sparse_coo_tensor_unsafe.default", "_sparse_coo_tensor_unsafe"),
        ("torch.load", "torch.load"),
        ("#custom_extension", "#custom_extension"),
    ],
)
def test_a_graph_calling_an_op_off_the_allowlist_is_refused_naming_it(programs, target, named):
    with pytest.raises(UnsafeModelError, match="does not run") as refused:
        load_model(exported_models.with_target(programs["cnn_bn"][0], target))
    assert named in str(refused.value)


def test_a_shape_expression_that_is_python_is_refused_before_torch_evaluates_it(programs, tmp_path: Path):
    marker = tmp_path / "evaluated"
    expression = f"__import__('os').system('touch {marker}')"
    with pytest.raises(UnsafeModelError, match="not sympy arithmetic"):
        load_model(exported_models.with_shape_expression(programs["transformer"][0], expression))
    assert not marker.exists()


def test_a_custom_op_is_refused_naming_its_library():
    archive, _, _ = exported_models.with_custom_op()
    with pytest.raises(UnsafeModelError, match="optiserve_test"):
        load_model(archive)


def test_a_program_exported_with_a_fixed_batch_is_refused_saying_how_to_export_it():
    archive, _, _ = exported_models.static_batch()
    with pytest.raises(InvalidModelError, match="fixed batch size.*dynamic_shapes"):
        load_model(archive)


# ---- over HTTP ----


def _upload(url: str, archive: bytes, inputs: tuple, name: str) -> requests.Response:
    files = {"model": ("model.pt2", archive), "calibration": ("calibration.pt", tiny_models.calibration_bytes(inputs))}
    return requests.post(url + "/models", files=files, data={"name": name, "config": __import__("json").dumps(FREEZE)}, headers=AUTH, timeout=120)


def _v2_infer(url: str, model: str, inputs: tuple[torch.Tensor, ...], names: list[str], version: str | None = None) -> dict:
    body = {"inputs": [{"name": n, "shape": list(t.shape), "datatype": "FP32", "data": t.reshape(-1).tolist()} for n, t in zip(names, inputs)]}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = requests.post(url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", ["two_inputs", "transformer"])
def test_a_program_uploaded_over_http_serves_what_the_eager_model_computes(server, programs, name):
    archive, model, inputs = programs[name]
    accepted = _upload(server.url, archive, inputs, f"pt2-{name.replace('_', '-')}")
    assert accepted.status_code == 202, accepted.text
    metadata = requests.get(f"{server.url}/v2/models/{accepted.json()['name']}", timeout=30).json()
    assert metadata["platform"] == "pytorch_export"
    names = [tensor["name"] for tensor in metadata["inputs"]]
    sample = tuple(t[:3] for t in inputs)
    with torch.no_grad():
        expected = _tensors(model(*sample))
    answer = _v2_infer(server.url, accepted.json()["name"], sample, names, "original")
    for tensor, reference in zip(answer["outputs"], expected, strict=True):
        assert torch.allclose(torch.tensor(tensor["data"]).reshape(tensor["shape"]), reference, atol=1e-4)
    status = wait_for(server.url, accepted.json()["id"])
    assert status["state"] == "ready", status
    optimized = _v2_infer(server.url, accepted.json()["name"], sample, names, "optimized")
    assert torch.allclose(torch.tensor(optimized["outputs"][0]["data"]).reshape(optimized["outputs"][0]["shape"]), expected[0], atol=1e-4)


def test_hostile_programs_over_http_are_4xx_and_run_nothing(server, programs, tmp_path: Path):
    archive, _, inputs = programs["cnn_bn"]
    marker = tmp_path / "ran"
    hostile = {
        "pickle": exported_models.with_pickled_sample_inputs(archive, str(marker)),
        "off-list": exported_models.with_target(archive, "torch.ops.aten.from_file.default"),
        "expression": exported_models.with_shape_expression(archive, f"__import__('os').system('touch {marker}')"),
        "custom": exported_models.with_custom_op()[0],
    }
    for label, data in hostile.items():
        response = _upload(server.url, data, inputs if label != "custom" else (torch.randn(8, 16),), f"hostile-{label}")
        assert response.status_code == 422, (label, response.text)
        assert requests.get(f"{server.url}/models/hostile-{label}", timeout=30).status_code == 404
    assert not marker.exists()
    assert requests.get(server.url + "/health", timeout=30).status_code == 200


def test_the_cli_optimizes_a_program_and_writes_it_back_as_the_original(programs, tmp_path: Path):
    archive, _, inputs = programs["cnn_bn"]
    (tmp_path / "model.pt2").write_bytes(archive)
    (tmp_path / "calibration.pt").write_bytes(tiny_models.calibration_bytes(inputs))
    (tmp_path / "config.json").write_text(__import__("json").dumps(FREEZE))
    command = [sys.executable, "-m", "clients.cli", "optimize", "model.pt2", "calibration.pt", "--config", "config.json", "--out", "out"]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "original.pt2").read_bytes() == archive
    assert (tmp_path / "out" / "optimized.pt").exists()
