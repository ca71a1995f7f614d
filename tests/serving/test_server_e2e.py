"""End to end over raw HTTP against a real server: upload, serve both variants, compare, metrics, batching."""

from __future__ import annotations

import base64
import io
import os
import random
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

import tiny_models
from server_harness import AUTH, FAST_LATENCY, FORCED_FREEZE, metric_value, predict, server_fixture, upload, wait_for

server = server_fixture()


def reference_outputs(archive: bytes, *inputs: torch.Tensor) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(archive))
    with torch.inference_mode():
        result = module(*inputs)
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, tuple) else [result]


def output_tensors(body: dict) -> list[torch.Tensor]:
    return [torch.tensor(o["data"]).reshape(o["shape"]) for o in body["outputs"]]


def traced_mlp(seed: int) -> bytes:
    torch.manual_seed(seed)
    model = tiny_models.MLP().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (torch.randn(2, 16),)), buffer)
    return buffer.getvalue()


def test_upload_serves_original_at_once_then_optimized_and_compare_and_metrics_count_per_variant(server):
    archive, inputs = tiny_models.cnn_bn()
    accepted = upload(server.url, archive, inputs, name="cnn", config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    model_id = accepted.json()["id"]
    assert accepted.json()["status_url"] == f"/models/{model_id}"
    sample = inputs[0][:4]
    expected = reference_outputs(archive, sample)[0]
    served = {"original": 0, "optimized": 0}

    first = predict(server.url, "cnn", sample, variant="original")
    assert first.status_code == 200, first.text
    assert first.json()["variant"] == "original"
    torch.testing.assert_close(output_tensors(first.json())[0], expected)
    served["original"] += 1
    default = predict(server.url, model_id, sample)  # the response says which variant served
    assert default.status_code == 200
    served[default.json()["variant"]] += 1

    status = wait_for(server.url, model_id)
    assert status["state"] == "ready", status
    assert status["chosen"]["candidate"] == "freeze"
    assert {v["name"] for v in status["variants"]} == {"original", "optimized"}
    assert status["default_variant"] == "optimized"
    for _ in range(3):
        answer = predict(server.url, "cnn", sample)
        assert answer.status_code == 200 and answer.json()["variant"] == "optimized"
        torch.testing.assert_close(output_tensors(answer.json())[0], expected, rtol=1e-4, atol=1e-5)
        served["optimized"] += 1

    compared = predict(server.url, "cnn", sample, endpoint="/compare")
    assert compared.status_code == 200, compared.text
    body = compared.json()
    assert set(body["outputs"]) == {"original", "optimized"}
    assert body["fidelity"]["agreement"] == 1.0 and body["fidelity"]["cosine"] > 0.9999
    assert body["inference_ms"]["original"] > 0 and body["inference_ms"]["optimized"] > 0

    text = requests.get(server.url + "/metrics").text
    for variant, count in served.items():
        labels = {"endpoint": "/predict", "model": "cnn", "variant": variant}
        assert metric_value(text, "optiserve_requests_total", status="200", **labels) == count
        assert metric_value(text, "optiserve_request_seconds_count", **labels) == count
        # Requests were sequential (batches of one); /compare ran each variant once more, in its own worker.
        assert metric_value(text, "optiserve_model_forward_seconds_count", model="cnn", variant=variant) == count + 1
    assert metric_value(text, "optiserve_requests_total", endpoint="/compare", model="cnn", variant="both") == 1
    assert metric_value(text, "optiserve_model_file_bytes", model="cnn", variant="original") == len(archive)
    assert metric_value(text, "optiserve_jobs", state="ready") >= 1
    assert metric_value(text, "optiserve_optimization_seconds_count", outcome="ready") >= 1
    assert 'le="0.0001"' in text and 'le="10.0"' in text


def test_concurrent_requests_for_two_models_each_get_their_own_answer(server):
    archives = {"twin-a": traced_mlp(1), "twin-b": traced_mlp(2)}  # same input shape: a mix-up would not fail loudly
    calibration = (torch.randn(16, 16),)
    for name, archive in archives.items():
        assert upload(server.url, archive, calibration, name=name, config=FORCED_FREEZE).status_code == 202
    rng = random.Random(0)
    jobs = []
    for index in range(48):
        name = rng.choice(sorted(archives))
        bad = index % 12 == 5  # wrong feature count: must fail alone, inside a batch with good requests
        x = torch.randn(rng.randint(1, 3), 15 if bad else 16)
        jobs.append((name, x, bad))

    def send(job):
        name, x, _ = job
        return predict(server.url, name, x, variant="original")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    for (name, x, bad), answer in zip(jobs, answers):
        if bad:
            assert answer.status_code == 422, answer.text
            assert "[N, 16] float32" in answer.json()["error"]["message"]
            continue
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == name
        torch.testing.assert_close(output_tensors(answer.json())[0], reference_outputs(archives[name], x)[0])


def test_no_qualifying_candidate_keeps_the_original_and_optimized_is_409(server):
    archive, inputs = tiny_models.mlp()
    accepted = upload(server.url, archive, inputs, name="stubborn", config={"plan": [{"pass": "freeze"}], "min_speedup": 1000, **FAST_LATENCY})
    status = wait_for(server.url, accepted.json()["id"])
    assert status["state"] == "ready" and status["chosen"]["candidate"] == "original"
    assert [v["name"] for v in status["variants"]] == ["original"]
    assert predict(server.url, "stubborn", inputs[0][:2]).json()["variant"] == "original"
    for endpoint, fields in (("/predict", {"variant": "optimized"}), ("/compare", {})):
        refused = predict(server.url, "stubborn", inputs[0][:2], endpoint=endpoint, **fields)
        assert refused.status_code == 409
        assert "no optimized variant" in refused.json()["error"]["message"]


def test_input_forms_two_inputs_dict_outputs_and_binary(server):
    archive, inputs = tiny_models.two_inputs()
    assert upload(server.url, archive, inputs, name="pair", config=FORCED_FREEZE).status_code == 202
    image, meta = inputs[0][:2], inputs[1][:2]
    expected = reference_outputs(archive, image, meta)
    nested = requests.post(server.url + "/predict", json={"model": "pair", "inputs": [image.tolist(), meta.tolist()], "variant": "original"})
    assert nested.status_code == 200, nested.text
    assert [o["name"] for o in nested.json()["outputs"]] == ["output_0", "output_1"]
    for got, want in zip(output_tensors(nested.json()), expected):
        torch.testing.assert_close(got, want)

    binary = predict(server.url, "pair", image, meta, variant="original", binary_outputs=True).json()
    first = binary["outputs"][0]
    decoded = torch.frombuffer(bytearray(base64.b64decode(first["data_b64"])), dtype=torch.float32).reshape(first["shape"])
    torch.testing.assert_close(decoded, expected[0])

    archive, inputs = tiny_models.dict_output()
    assert upload(server.url, archive, inputs, name="named", config=FORCED_FREEZE).status_code == 202
    raw = inputs[0][:3].contiguous()
    as_bytes = {"shape": [3, 10], "datatype": "FP32", "data_b64": base64.b64encode(raw.numpy().tobytes()).decode()}
    answer = requests.post(server.url + "/predict", json={"model": "named", "inputs": [as_bytes], "variant": "original"})
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["logits", "embedding"]
    torch.testing.assert_close(output_tensors(answer.json())[0], reference_outputs(archive, raw)[0])


def test_listing_report_download_replace_and_delete(server):
    archive, inputs = tiny_models.mlp()
    first = upload(server.url, archive, inputs, name="lifecycle", config=FORCED_FREEZE).json()
    assert upload(server.url, archive, inputs, name="lifecycle", config=FORCED_FREEZE).status_code == 409
    second = upload(server.url, archive, inputs, name="lifecycle", config=FORCED_FREEZE, replace=True)
    assert second.status_code == 202 and second.json()["replaced"] == first["id"]
    model_id = second.json()["id"]
    assert requests.get(f"{server.url}/models/{first['id']}").status_code == 404
    listed = {m["name"]: m["id"] for m in requests.get(server.url + "/models").json()["models"]}
    assert listed["lifecycle"] == model_id

    wait_for(server.url, model_id)
    report = requests.get(f"{server.url}/models/lifecycle/report")
    assert report.status_code == 200 and report.json()["chosen"]["candidate"] == "freeze"
    page = requests.get(f"{server.url}/models/lifecycle/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "freeze" in page.text
    original = requests.get(f"{server.url}/models/{model_id}/variants/original", headers=AUTH)
    assert original.status_code == 200 and original.content == archive
    optimized = requests.get(f"{server.url}/models/{model_id}/variants/optimized", headers=AUTH).content
    x = inputs[0][:2]
    torch.testing.assert_close(reference_outputs(optimized, x)[0], reference_outputs(archive, x)[0], rtol=1e-4, atol=1e-5)

    assert requests.delete(f"{server.url}/models/{model_id}", headers=AUTH).status_code == 200
    assert requests.get(f"{server.url}/models/{model_id}").status_code == 404
    gone = predict(server.url, "lifecycle", x)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert not (server.store / "models" / model_id).exists()


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_health_and_ready(server, path):
    answer = requests.get(server.url + path)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_an_onnx_runtime_variant_serves_like_a_torchscript_one(server):
    archive, inputs = tiny_models.two_inputs()
    config = {"plan": [{"pass": "onnx_export"}], "force": True, **FAST_LATENCY}
    model_id = upload(server.url, archive, inputs, name="via-ort", config=config).json()["id"]
    status = wait_for(server.url, model_id)
    assert status["state"] == "ready", status
    assert {v["name"]: v["runtime"] for v in status["variants"]} == {"original": "torchscript", "optimized": "onnxruntime"}
    image, meta = inputs[0][:3], inputs[1][:3]
    answer = predict(server.url, "via-ort", image, meta)
    assert answer.status_code == 200 and answer.json()["variant"] == "optimized", answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["output_0", "output_1"]
    for got, want in zip(output_tensors(answer.json()), reference_outputs(archive, image, meta)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    as_int64 = {"shape": list(image.shape), "datatype": "INT64", "data": image.long().reshape(-1).tolist()}
    mistyped = requests.post(server.url + "/predict", json={"model": "via-ort", "inputs": [as_int64, meta.tolist()]})
    assert mistyped.status_code == 422, mistyped.text  # ORT's type error stays this request's 422
    compared = predict(server.url, "via-ort", image, meta, endpoint="/compare").json()
    assert compared["fidelity"]["cosine"] > 0.9999
    text = requests.get(server.url + "/metrics").text
    assert metric_value(text, "optiserve_model_forward_seconds_count", model="via-ort", variant="optimized", runtime="onnxruntime") == 2


def test_a_job_process_that_dies_fails_its_job_with_the_reason_and_the_original_serves(server):
    archive, inputs = tiny_models.cnn_bn()
    model_id = upload(server.url, archive, inputs, name="doomed", config={"latency": {"rounds": 5000, "warmup": 1}}).json()["id"]
    wait_for(server.url, model_id, states=("optimizing",))
    os.kill(server.job_process(), signal.SIGKILL)  # what a segfault or the OOM killer would do
    status = wait_for(server.url, model_id)
    assert status["state"] == "failed" and "died (signal SIGKILL)" in status["error"], status
    answer = predict(server.url, "doomed", inputs[0][:2])
    assert answer.status_code == 200 and answer.json()["variant"] == "original"
