"""Bad uploads and bad requests get a clear 4xx in the one error shape, store nothing, and never stop
another model from serving."""

from __future__ import annotations

import io
import json
import os

import pytest
import requests
import torch

import tiny_models
from server_harness import AUTH, FORCED_FREEZE, TEST_ENV, predict, server_fixture, upload

server = server_fixture()
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
MAX_UPLOAD = int(TEST_ENV["OPTISERVE_MAX_UPLOAD_BYTES"])


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def healthy(server):
    """A model that must keep serving through everything below."""
    accepted = upload(server.url, MLP_ARCHIVE, MLP_INPUTS, name="healthy", config=FORCED_FREEZE)
    assert accepted.status_code == 202
    return accepted.json()["id"]


def assert_error(response: requests.Response, status: int, code: str | None = None, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert mentions.lower() in error["message"].lower(), error["message"]


def assert_still_serving(server, healthy_id: str) -> None:
    answer = predict(server.url, healthy_id, MLP_INPUTS[0][:2])
    assert answer.status_code == 200, answer.text


def post_upload(url: str, model: bytes, calibration: bytes, labels: bytes | None = None, **form) -> requests.Response:
    files = {"model": ("model.pt", model), "calibration": ("calibration.pt", calibration)}
    if labels is not None:
        files["labels"] = ("labels.pt", labels)
    return requests.post(url + "/models", files=files, data=form, headers=AUTH, timeout=60)


CALIBRATION = tiny_models.calibration_bytes(MLP_INPUTS)
STATE_DICT = torch_bytes(tiny_models.MLP().state_dict())
BAD_UPLOADS = {
    "random bytes": (dict(model=os.urandom(5000), calibration=CALIBRATION), 422, "invalid_model", "not a TorchScript archive"),
    "state_dict": (dict(model=STATE_DICT, calibration=CALIBRATION), 422, "invalid_model", "state_dict"),
    "truncated archive": (dict(model=MLP_ARCHIVE[: len(MLP_ARCHIVE) // 2], calibration=CALIBRATION), 422, "invalid_model", "truncated"),
    "empty model": (dict(model=b"", calibration=CALIBRATION), 422, "invalid_model", "empty"),
    "mismatched calibration": (
        dict(model=MLP_ARCHIVE, calibration=torch_bytes(torch.randn(8, 15))), 422, "invalid_calibration", "failed on the calibration"
    ),
    "NaN calibration": (
        dict(model=MLP_ARCHIVE, calibration=torch_bytes(torch.full((8, 16), float("nan")))), 422, "invalid_calibration", "NaN"
    ),
    "pickled calibration": (dict(model=MLP_ARCHIVE, calibration=os.urandom(300)), 422, "invalid_calibration", "could not read"),
    "labels of the wrong length": (
        dict(model=MLP_ARCHIVE, calibration=CALIBRATION, labels=torch_bytes(torch.zeros(3, dtype=torch.long))), 422, "invalid_labels", "labels"
    ),
    "oversized file": (dict(model=os.urandom(MAX_UPLOAD + 1000), calibration=CALIBRATION), 413, "request_entity_too_large", "limit"),
    "bad name": (dict(model=MLP_ARCHIVE, calibration=CALIBRATION, name="Bad Name!"), 422, "invalid_name", "a-z"),
    "name too long": (dict(model=MLP_ARCHIVE, calibration=CALIBRATION, name="n" * 65), 422, "invalid_name", "64"),
    "config not JSON": (dict(model=MLP_ARCHIVE, calibration=CALIBRATION, config="{rounds: 3"), 422, "invalid_config", "not valid JSON"),
    "config not an object": (dict(model=MLP_ARCHIVE, calibration=CALIBRATION, config="[1, 2]"), 422, "invalid_config", "object"),
    "config unknown field": (
        dict(model=MLP_ARCHIVE, calibration=CALIBRATION, config=json.dumps({"rounds": 3})), 422, "invalid_config", "rounds"
    ),
    "config bad pass": (
        dict(model=MLP_ARCHIVE, calibration=CALIBRATION, config=json.dumps({"plan": [{"pass": "teleport"}]})), 422, "invalid_config", "teleport"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_refused_with_a_message_and_nothing_is_stored(server, healthy, case):
    fields, status, code, mentions = BAD_UPLOADS[case]
    assert_error(post_upload(server.url, **fields), status, code, mentions)
    assert [m["id"] for m in requests.get(server.url + "/models").json()["models"]] == [healthy]
    assert sorted(p.name for p in (server.store / "models").iterdir()) == [healthy]
    assert_still_serving(server, healthy)


def test_upload_missing_a_part_is_422(server, healthy):
    answer = requests.post(server.url + "/models", files={"model": ("m.pt", MLP_ARCHIVE)}, headers=AUTH)
    assert_error(answer, 422, "invalid_request", "calibration")


def test_taken_name_is_409(server, healthy):
    assert_error(post_upload(server.url, MLP_ARCHIVE, CALIBRATION, name="healthy"), 409, "name_taken", "replace=true")


BAD_PREDICTIONS = {
    "malformed JSON": ("not json{", 422, "invalid_request", "not valid JSON"),
    "no inputs": ({"model": "healthy", "inputs": []}, 422, "invalid_request", "inputs"),
    "unknown field": ({"model": "healthy", "inputs": [[[0.0] * 16]], "fast": True}, 422, "invalid_request", "fast"),
    "unknown datatype": (
        {"model": "healthy", "inputs": [{"shape": [1, 16], "datatype": "FP8", "data": [0.0] * 16}]}, 422, "invalid_request", "datatype"
    ),
    "data does not fit shape": (
        {"model": "healthy", "inputs": [{"shape": [2, 16], "datatype": "FP32", "data": [0.0] * 16}]}, 422, "invalid_input", "needs 32"
    ),
    "no bytes in a shape no array has": (
        {"model": "healthy", "inputs": [{"shape": [0, 2**31, 2**31, 2**31], "datatype": "FP32", "data_b64": ""}]}, 422, "invalid_input", "no array"
    ),
    "no values in a shape no array has": (
        {"model": "healthy", "inputs": [{"shape": [0, 2**31, 2**31, 2**31], "datatype": "FP32", "data": []}]}, 422, "invalid_input", "no array"
    ),
    "bad base64": ({"model": "healthy", "inputs": [{"shape": [1, 16], "datatype": "FP32", "data_b64": "%%%"}]}, 422, "invalid_input", "base64"),
    "ragged nested list": ({"model": "healthy", "inputs": [[[0.0] * 16, [0.0] * 3]]}, 422, "invalid_input", "rectangular"),
    "wrong feature count": ({"model": "healthy", "inputs": [[[0.0] * 15]]}, 422, "invalid_input", "[N, 16] float32"),
    "wrong dtype": (
        {"model": "healthy", "inputs": [{"shape": [1, 16], "datatype": "INT64", "data": [0] * 16}]}, 422, "invalid_input", "float32"
    ),
    "too many inputs": ({"model": "healthy", "inputs": [[[0.0] * 16], [[0.0] * 16]]}, 422, "invalid_input", "takes 1 input"),
    "scalar input": ({"model": "healthy", "inputs": [{"shape": [], "datatype": "FP32", "data": [1.0]}]}, 422, "invalid_input", "batch dimension"),
    "unknown model": ({"model": "nobody", "inputs": [[[0.0] * 16]]}, 404, "model_not_found", "nobody"),
    "unknown variant": ({"model": "healthy", "variant": "fancy", "inputs": [[[0.0] * 16]]}, 422, "invalid_request", "variant"),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTIONS))
def test_bad_prediction_request_is_4xx_and_others_keep_serving(server, healthy, case):
    body, status, code, mentions = BAD_PREDICTIONS[case]
    kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) else {"json": body}
    assert_error(requests.post(server.url + "/predict", timeout=60, **kwargs), status, code, mentions)
    assert_still_serving(server, healthy)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/models/nobody", 404, "model_not_found"),
        ("GET", "/models/nobody/report", 404, "model_not_found"),
        ("GET", "/models/healthy/variants/fancy", 404, "variant_not_found"),
        ("DELETE", "/models/nobody", 404, "model_not_found"),
        ("GET", "/no/such/route", 404, "not_found"),
        ("PUT", "/models", 405, "method_not_allowed"),
    ],
)
def test_management_errors_share_the_error_shape(server, healthy, method, path, status, code):
    assert_error(requests.request(method, server.url + path, headers=AUTH), status, code)
