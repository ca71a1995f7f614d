"""Open Inference Protocol v2 over gRPC, proven with a real client: tritonclient.grpc, used unchanged.

One server for the module, with two API-server processes (both listen on the gRPC port) and the key
required on inference, so every call here also proves that the key travels as gRPC metadata.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import tiny_models  # noqa: E402
from server_harness import API_KEY, AUTH, FORCED_FREEZE, free_port, server_fixture, upload, wait_for  # noqa: E402

GRPC_PORT = free_port()
server = server_fixture({"OPTISERVE_GRPC_PORT": str(GRPC_PORT), "OPTISERVE_API_SERVERS": "2", "OPTISERVE_AUTH_INFERENCE": "true"})
KEY = {"authorization": f"Bearer {API_KEY}"}
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
TWO_ARCHIVE, TWO_INPUTS = tiny_models.two_inputs()


@pytest.fixture(scope="module")
def models(server):
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(tiny_models.TokenClassifier().eval()), buffer)
    uploads = {"mlp": (MLP_ARCHIVE, MLP_INPUTS), "two": (TWO_ARCHIVE, TWO_INPUTS), "tokens": (buffer.getvalue(), (torch.randint(0, 50, (16, 5)),))}
    for name, (archive, inputs) in uploads.items():
        accepted = upload(server.url, archive, inputs, name=name, config=FORCED_FREEZE)
        assert accepted.status_code == 202, accepted.text
        assert wait_for(server.url, accepted.json()["id"])["state"] == "ready"
    return {name: archive for name, (archive, _) in uploads.items()}


@pytest.fixture(scope="module")
def client(server):
    return tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")


def optimized_archive(server, name: str) -> bytes:
    return requests.get(f"{server.url}/models/{name}/variants/optimized", headers=AUTH, timeout=30).content


def infer(client, model: str, arrays: dict[str, np.ndarray], version: str = "", datatype: str | None = None, **kwargs):
    inputs = []
    for name, array in arrays.items():
        item = tritonclient_grpc.InferInput(name, list(array.shape), datatype or tritonclient_grpc.np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array)  # tritonclient.grpc sends raw_input_contents
        inputs.append(item)
    return client.infer(model, inputs, model_version=version, headers=KEY, **kwargs)


def listening_sockets(port: int) -> int:
    # grpc listens on a dual-stack socket (::ffff:127.0.0.1): tcp6.
    lines = [line for table in ("tcp", "tcp6") for line in open(f"/proc/net/{table}").read().splitlines()[1:]]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def test_every_api_server_listens_on_the_grpc_port(server):
    assert listening_sockets(GRPC_PORT) == 2  # SO_REUSEPORT: one socket per API-server process


def test_health_and_metadata(client, models):
    assert client.is_server_live(headers=KEY) and client.is_server_ready(headers=KEY)
    assert client.is_model_ready("mlp", headers=KEY) and client.is_model_ready("mlp", "optimized", headers=KEY)
    assert client.get_server_metadata(headers=KEY).name == "optiserve"
    metadata = client.get_model_metadata("two", headers=KEY)
    assert sorted(metadata.versions) == ["optimized", "original"] and metadata.platform == "pytorch_torchscript"
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [("image", "FP32", [-1, 1, 8, 8]), ("meta", "FP32", [-1, 4])]
    assert client.get_model_metadata("tokens", headers=KEY).inputs[0].datatype == "INT64"


@pytest.mark.parametrize("version", ["original", "optimized"])
def test_two_input_infer_equals_a_direct_call(server, client, models, version):
    archive = models["two"] if version == "original" else optimized_archive(server, "two")
    image, meta = (t[:5] for t in TWO_INPUTS)
    names = [i.name for i in client.get_model_metadata("two", headers=KEY).inputs]
    result = infer(client, "two", dict(zip(names, (image.numpy(), meta.numpy()))), version)
    response = result.get_response()
    assert response.model_version == version and response.model_name == "two"
    expected = tiny_models.local_forward(archive, image, meta)
    for output, wanted in zip(response.outputs, expected):
        np.testing.assert_array_equal(result.as_numpy(output.name), wanted.numpy())  # bit-exact: the same file
    assert response.parameters["inference_ms"].double_param > 0


def test_mlp_default_version_and_requested_outputs(client, models):
    x = MLP_INPUTS[0][:3]
    result = infer(client, "mlp", {"x": x.numpy()}, outputs=[tritonclient_grpc.InferRequestedOutput("output")])
    assert result.get_response().model_version == "optimized"  # the default variant, as on REST
    np.testing.assert_allclose(result.as_numpy("output"), tiny_models.local_forward(MLP_ARCHIVE, x).numpy(), rtol=1e-5, atol=1e-6)


def test_bf16_input_is_cast_to_the_models_dtype(client, models):
    x = MLP_INPUTS[0][:2]
    import ml_dtypes  # tritonclient's own dependency: its BF16 arrays

    result = infer(client, "mlp", {"x": x.numpy().astype(ml_dtypes.bfloat16)}, "original", datatype="BF16")
    assert "bfloat16 -> float32" in result.get_response().parameters["casts"].string_param
    expected = tiny_models.local_forward(MLP_ARCHIVE, x.to(torch.bfloat16).float())
    np.testing.assert_array_equal(result.as_numpy("output"), expected.numpy())


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_datatypes(client, models, dtype):
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=dtype)
    result = infer(client, "tokens", {"ids": ids}, "original")
    expected = tiny_models.local_forward(models["tokens"], torch.from_numpy(ids.astype(np.int64)))
    np.testing.assert_array_equal(result.as_numpy(result.get_response().outputs[0].name), expected.numpy())


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_errors_map_to_grpc_status_codes(client, models):
    x = {"x": MLP_INPUTS[0][:2].numpy()}
    code, message = status_of(lambda: infer(client, "nobody", x))
    assert code == "StatusCode.NOT_FOUND" and "nobody" in message
    code, _ = status_of(lambda: infer(client, "mlp", x, "v7"))
    assert code == "StatusCode.NOT_FOUND"
    code, message = status_of(lambda: infer(client, "mlp", {"x": np.zeros((2, 3), np.float32)}, "original"))
    assert code == "StatusCode.INVALID_ARGUMENT" and "expects" in message
    code, _ = status_of(lambda: client.get_model_metadata("nobody", headers=KEY))
    assert code == "StatusCode.NOT_FOUND"
    no_array = tritonclient_grpc.InferInput("x", [0, 2**31, 2**31, 2**31], "FP32")  # no data: none is needed, and none fits
    code, message = status_of(lambda: client.infer("mlp", [no_array], model_version="original", headers=KEY))
    assert code == "StatusCode.INVALID_ARGUMENT" and "no array holds" in message
    too_deep = tritonclient_grpc.InferInput("x", [1] * 70, "FP32")
    code, message = status_of(lambda: client.infer("mlp", [too_deep], model_version="original", headers=KEY))
    assert code == "StatusCode.INVALID_ARGUMENT" and "70 dimensions" in message


def test_inference_needs_the_key_when_auth_inference_is_on(client, models):
    inputs = [tritonclient_grpc.InferInput("x", [2, 16], "FP32")]
    inputs[0].set_data_from_numpy(MLP_INPUTS[0][:2].numpy())
    for headers in (None, {"authorization": "Bearer wrong"}):
        code, message = status_of(lambda: client.infer("mlp", inputs, headers=headers))
        assert code == "StatusCode.UNAUTHENTICATED" and "Bearer" in message or "wrong" in message
    code, _ = status_of(lambda: client.is_model_ready("mlp"))
    assert code == "StatusCode.UNAUTHENTICATED"


def test_routing_policy_applies_and_metrics_count_grpc(server, client, models):
    pinned = requests.put(f"{server.url}/models/two/routing", json={"mode": "pinned", "variant": "original"}, headers=AUTH, timeout=30)
    assert pinned.status_code == 200, pinned.text
    try:
        names = [i.name for i in client.get_model_metadata("two", headers=KEY).inputs]
        result = infer(client, "two", dict(zip(names, (t[:2].numpy() for t in TWO_INPUTS))))
        assert result.get_response().model_version == "original"
    finally:
        requests.put(f"{server.url}/models/two/routing", json={"mode": "pinned", "variant": "optimized"}, headers=AUTH, timeout=30)
    text = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text
    assert 'optiserve_requests_total{endpoint="/inference.GRPCInferenceService/ModelInfer",model="two",status="200",variant="original"}' in text


def raw_call(method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `body` as the request of `method`, unchecked by any client; (code, details) of the error."""
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}", request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.RpcError) as caught:
            call(body, metadata=tuple(KEY.items()), timeout=120)
    return caught.value.code(), caught.value.details()


def test_requests_of_millions_of_parts_are_refused_unparsed_and_serving_goes_on(client, models):
    # Half a million empty `inputs` in 1 MB (this server's limit is 2 MB): 10 million had held the
    # event loop 2.4 s and taken 1 GB just to parse.
    inputs_field = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"].number
    code, details = raw_call("ModelInfer", bytes([inputs_field << 3 | 2, 0]) * 500_000)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than 10000 fields" in details
    unknown_fields = b"\xa0\x06\x01" * 300_000  # field 100, a varint, 300,000 times
    code, details = raw_call("ModelMetadata", unknown_fields)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than 10000 fields" in details
    # 1 MB of one-byte int64 varints parse to 8 MiB and more, made an array one value at a time.
    values = np.zeros(2**20 + 1, np.int64)
    typed = pb.ModelInferRequest(model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="INT64", shape=[len(values), 1], contents=pb.InferTensorContents(int64_contents=values))])
    code, details = raw_call("ModelInfer", typed.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in details
    # Only the RPCs served are registered: protobuf would parse the others' requests first.
    code, _ = raw_call("ModelStreamInfer", bytes([inputs_field << 3 | 2, 0]) * 1000)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    x = MLP_INPUTS[0][:2].numpy()
    expected = tiny_models.local_forward(MLP_ARCHIVE, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(infer(client, "mlp", {"x": x}, "original").as_numpy("output"), expected, rtol=1e-5, atol=1e-6)


# ---- fuzzing ModelInfer: any message gets an answer or a client error, never UNKNOWN / INTERNAL ----

DATATYPES = ["BOOL", "UINT8", "UINT16", "INT8", "INT32", "INT64", "FP16", "BF16", "FP64", "BYTES", "", "fp32"]
NUMPY_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
            "BF16": np.uint16, "FP32": np.float32, "FP64": np.float64}
SIZES = st.sampled_from([0, 1, 2, 15, 16, 17, 64, 2**31, 2**40, 2**62])


@st.composite
def near_valid_requests(draw) -> bytes:
    """The MLP's request (rows of 16 float32 values, NaN and Inf among them) with up to two things changed."""
    changes = draw(st.sets(st.sampled_from(["datatype", "shape", "raw", "name", "model", "count", "version", "output"]), max_size=2))
    rows = draw(st.sampled_from([1, 2, 64, 0]))
    datatype = draw(st.sampled_from(DATATYPES)) if "datatype" in changes else "FP32"
    values = draw(st.lists(st.floats(width=32), min_size=rows * 16, max_size=rows * 16))
    with np.errstate(all="ignore"):
        array = np.asarray(values, np.float32).reshape(rows, 16).astype(NUMPY_OF.get(datatype, np.float32))
    shape = draw(st.lists(SIZES, max_size=18)) if "shape" in changes else list(array.shape)
    raw = draw(st.binary(max_size=200)) if "raw" in changes else b"" if 0 in shape else array.tobytes()  # an empty shape's bytes fit
    tensor = pb.ModelInferRequest.InferInputTensor(name=draw(st.sampled_from(["y", ""])) if "name" in changes else "x", datatype=datatype, shape=shape)
    inputs, raws = draw(st.sampled_from([(2, 2), (0, 0), (1, 0), (1, 2)])) if "count" in changes else (1, 1)
    request = pb.ModelInferRequest(
        model_name="nobody" if "model" in changes else "mlp",
        model_version="7" if "version" in changes else draw(st.sampled_from(["", "original", "optimized"])),
        inputs=[tensor] * inputs, raw_input_contents=[raw] * raws,
    )
    if "output" in changes or draw(st.booleans()):
        request.outputs.add(name="nope" if "output" in changes else "output")
    return request.SerializeToString()


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(near_valid_requests(), st.binary(max_size=300)))
def test_any_model_infer_message_gets_an_answer_or_a_client_error(models, body):
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=bytes, response_deserializer=bytes)
        try:
            call(body, metadata=tuple(KEY.items()), timeout=60)
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (error.code(), error.details(), body[:200])
