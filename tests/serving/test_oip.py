"""Open Inference Protocol v2, proven with a real client: tritonclient[http], used unchanged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

import tiny_models  # noqa: E402
from server_harness import AUTH, FORCED_FREEZE, server_fixture, upload, wait_for  # noqa: E402

server = server_fixture()
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
TWO_ARCHIVE, TWO_INPUTS = tiny_models.two_inputs()


@pytest.fixture(scope="module")
def models(server):
    torch.manual_seed(0)
    tokens = torch.jit.script(tiny_models.TokenClassifier().eval())
    buffer = io.BytesIO()
    torch.jit.save(tokens, buffer)
    uploads = {
        "mlp": (MLP_ARCHIVE, MLP_INPUTS),
        "two": (TWO_ARCHIVE, TWO_INPUTS),
        "tokens": (buffer.getvalue(), (torch.randint(0, 50, (16, 5)),)),
    }
    for name, (archive, inputs) in uploads.items():
        accepted = upload(server.url, archive, inputs, name=name, config=FORCED_FREEZE)
        assert accepted.status_code == 202, accepted.text
        assert wait_for(server.url, accepted.json()["id"])["state"] == "ready"
    return {name: torch.jit.load(io.BytesIO(archive)) for name, (archive, _) in uploads.items()}


@pytest.fixture(scope="module")
def client(server):
    return tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)


def optimized_module(server, name: str):
    archive = requests.get(f"{server.url}/models/{name}/variants/optimized", headers=AUTH, timeout=30).content
    return torch.jit.load(io.BytesIO(archive))


def infer_inputs(arrays: dict[str, np.ndarray], binary: bool) -> list:
    inputs = []
    for name, array in arrays.items():
        item = tritonclient_http.InferInput(name, list(array.shape), _triton_datatype(array))
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return inputs


def _triton_datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def test_health_and_metadata_through_tritonclient(client, models):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "original") and client.is_model_ready("mlp", "optimized")
    assert not client.is_model_ready("nobody")
    metadata = client.get_model_metadata("two")
    assert metadata["name"] == "two" and metadata["platform"] == "pytorch_torchscript"
    assert sorted(metadata["versions"]) == ["optimized", "original"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [("image", "FP32", [-1, 1, 8, 8]), ("meta", "FP32", [-1, 4])]
    assert [o["shape"][0] for o in metadata["outputs"]] == [-1, -1]
    tokens = client.get_model_metadata("tokens", "original")
    assert tokens["inputs"][0]["datatype"] == "INT64"
    assert server_metadata(client)["name"] == "optiserve"


def server_metadata(client) -> dict:
    return client.get_server_metadata()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["original", "optimized"])
def test_infer_equals_a_direct_call_of_the_same_file(server, client, models, binary, version):
    reference = models["two"] if version == "original" else optimized_module(server, "two")
    image, extra = (t[:5].numpy() for t in TWO_INPUTS)
    names = [i["name"] for i in client.get_model_metadata("two")["inputs"]]
    outputs = [tritonclient_http.InferRequestedOutput(o["name"], binary_data=binary) for o in client.get_model_metadata("two")["outputs"]]
    result = client.infer("two", infer_inputs(dict(zip(names, (image, extra))), binary), model_version=version, outputs=outputs)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image), torch.from_numpy(extra))
    for output, wanted in zip(outputs, expected):
        got = result.as_numpy(output._name)
        assert got.dtype == np.float32 and got.shape == tuple(wanted.shape)
        np.testing.assert_array_equal(got, wanted.numpy())  # bit-exact: the same file, the same thread count
    assert result.get_response()["model_version"] == version


def test_default_request_is_binary_both_ways_and_serves_the_default_variant(client, models):
    array = MLP_INPUTS[0][:3].numpy()
    result = client.infer("mlp", infer_inputs({"x": array}, binary=True))
    response = result.get_response()
    assert response["model_version"] == "optimized"
    assert "binary_data_size" in response["outputs"][0]["parameters"]
    assert result.as_numpy(response["outputs"][0]["name"]).shape == (3, 4)


def test_eight_requests_in_flight_with_async_infer(client, models):
    arrays = [MLP_INPUTS[0][i : i + 2].numpy() for i in range(8)]
    pending = [client.async_infer("mlp", infer_inputs({"x": a}, binary=True), model_version="original") for a in arrays]
    with torch.inference_mode():
        expected = [models["mlp"](torch.from_numpy(a)).numpy() for a in arrays]
    for request, wanted in zip(pending, expected):
        result = request.get_result()
        # Requests in flight together are batched into one forward; the GEMM kernel for the merged
        # batch may round differently in the last bit than the one for two rows alone.
        np.testing.assert_allclose(result.as_numpy(result.get_response()["outputs"][0]["name"]), wanted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_real_inputs_of_another_float_dtype_are_cast_and_the_response_says_so(client, models, dtype):
    array = MLP_INPUTS[0][:2].numpy().astype(dtype)
    result = client.infer("mlp", infer_inputs({"x": array}, binary=True), model_version="original")
    response = result.get_response()
    assert f"{np.dtype(dtype).name} -> float32" in response["parameters"]["casts"]
    with torch.inference_mode():
        expected = models["mlp"](torch.from_numpy(array).float()).numpy()
    np.testing.assert_array_equal(result.as_numpy(response["outputs"][0]["name"]), expected)


def test_bf16_input_travels_as_binary(server, models):
    values = MLP_INPUTS[0][:2].to(torch.bfloat16)
    header = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "BF16", "parameters": {"binary_data_size": 64}}]}
    text = json.dumps(header).encode()
    raw = values.view(torch.int16).numpy().tobytes()
    response = requests.post(
        f"{server.url}/v2/models/mlp/versions/original/infer", data=text + raw, headers={"Inference-Header-Content-Length": str(len(text))}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert "bfloat16 -> float32" in response.json()["parameters"]["casts"]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_integer_datatypes_reach_an_integer_model(client, models, dtype):
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=dtype)
    result = client.infer("tokens", infer_inputs({"ids": ids}, binary=True), model_version="original")
    with torch.inference_mode():
        expected = models["tokens"](torch.from_numpy(ids.astype(np.int64))).numpy()
    np.testing.assert_array_equal(result.as_numpy(result.get_response()["outputs"][0]["name"]), expected)


def test_repository_index_lists_every_model_and_version(client, models):
    index = client.get_model_repository_index()
    states = {(entry["name"], entry["version"]): entry["state"] for entry in index}
    assert states[("mlp", "original")] == "READY" and states[("mlp", "optimized")] == "READY"
    assert {name for name, _ in states} >= {"mlp", "two", "tokens"}


def expect_error(call, status: int, mentions: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == str(status), caught.value
    assert mentions.lower() in caught.value.message().lower(), caught.value.message()


def test_errors_reach_tritonclient_with_their_message_and_status(client, models):
    good = MLP_INPUTS[0][:2].numpy()
    expect_error(lambda: client.infer("nobody", infer_inputs({"x": good}, True)), 404, "no model")
    expect_error(lambda: client.infer("mlp", infer_inputs({"x": good}, True), model_version="fancy"), 404, "version")
    expect_error(lambda: client.infer("mlp", infer_inputs({"x": good[:, :7]}, True)), 400, "expects")
    expect_error(lambda: client.infer("mlp", infer_inputs({"y": good}, True)), 400, "inputs are ['x']")
    expect_error(lambda: client.get_model_metadata("nobody"), 404, "no model")


RAW_CASES = {
    "sizes that do not add up to the body": (
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}, 80, "follow the JSON header"
    ),
    "binary_data_size that does not fit the shape": (
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 60}}]}, 60, "needs 64 bytes"
    ),
    "a body cut short": (
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}, 10, "short"
    ),
    "an unknown datatype": ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP8", "data": [0] * 16}]}, 0, "unknown datatype"),
    "data that does not fill the shape": ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 15}]}, 0, "needs 16"),
    "a huge shape with empty data": ({"inputs": [{"name": "x", "shape": [10**20, 0], "datatype": "FP32", "data": []}]}, 0, "shape"),
    # Every size within the schema's bound, yet no array has this shape (numpy raised a bare ValueError: a 500).
    "empty data in a shape no array has": (
        {"inputs": [{"name": "x", "shape": [0, 2**31, 2**31, 2**31], "datatype": "FP32", "data": []}]}, 0, "no array holds"
    ),
    "no binary data in a shape no array has": (
        {"inputs": [{"name": "x", "shape": [0, 2**31, 2**31, 2**31], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}, 0, "no array holds"
    ),
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_malformed_bodies_get_400_with_the_protocol_error_shape(server, models, case):
    header, binary_bytes, mentions = RAW_CASES[case]
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text))} if binary_bytes else {}
    response = requests.post(f"{server.url}/v2/models/mlp/infer", data=text + bytes(binary_bytes), headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and mentions.lower() in response.json()["error"].lower()


def test_a_header_length_beyond_the_body_gets_400(server, models):
    response = requests.post(f"{server.url}/v2/models/mlp/infer", data=b"{}", headers={"Inference-Header-Content-Length": "999"}, timeout=30)
    assert response.status_code == 400 and "body holds 2 bytes" in response.json()["error"]


def test_large_tensors_go_through_shared_memory_both_ways_and_leave_no_segment(server, client, models):
    from server.inference.shared_tensors import MIN_BYTES, SHM_DIR, prefix_for

    x = torch.randn(20_000, 16).numpy()  # 1.3 MB in (the test limit is 2 MB), 0.3 MB out: both over MIN_BYTES
    assert x.nbytes > MIN_BYTES and x.shape[0] * 4 * 4 > MIN_BYTES
    result = client.infer("mlp", infer_inputs({"x": x}, binary=True), model_version="original")
    with torch.inference_mode():
        expected = models["mlp"](torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(result.as_numpy(result.get_response()["outputs"][0]["name"]), expected)
    assert not list(SHM_DIR.glob(prefix_for(server.store) + "*"))
