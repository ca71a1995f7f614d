"""The front end no request can stall or kill: JSON bodies within their own limit and parsed off the
API server, /health answering during large requests, API server processes restarted after they die,
and shared memory that is reserved, within a budget, before it is written."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from torch import nn

import tiny_models
from server_harness import FORCED_FREEZE, server_fixture, upload, wait_for
from server.inference.shared_tensors import SHM_DIR, SharedSpace, ShmFull, prefix_for
from wire.codec import decode_response, encode_request, wire_tensor

MAX_JSON = 4 * 2**20
server = server_fixture({"OPTISERVE_MAX_UPLOAD_BYTES": str(96 * 2**20), "OPTISERVE_MAX_JSON_BYTES": str(MAX_JSON)})
# A budget far below what one large tensor needs: the fallback and shm_full paths.
tight = server_fixture({"OPTISERVE_MAX_UPLOAD_BYTES": str(64 * 2**20), "OPTISERVE_SHM_BUDGET_BYTES": str(2**20)})
MLP_ARCHIVE, MLP_INPUTS = tiny_models.mlp()
# Generous: /health answers in milliseconds; a front end stuck behind a request takes seconds.
HEALTH_TIMEOUT = 2.0


class Widen(nn.Module):
    """[N, 16] -> [N, 128]: an answer eight times the size of its request."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 8) * 2


def _ready(url: str, archive: bytes, inputs: tuple, name: str) -> None:
    accepted = upload(url, archive, inputs, name=name, config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    assert wait_for(url, accepted.json()["id"])["state"] == "ready"


@pytest.fixture(scope="module")
def mlp(server):
    _ready(server.url, MLP_ARCHIVE, MLP_INPUTS, "mlp")
    return torch.jit.load(io.BytesIO(MLP_ARCHIVE))


@pytest.fixture(scope="module")
def widen(tight):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Widen()), buffer)
    _ready(tight.url, buffer.getvalue(), (torch.randn(8, 16),), "widen")


def binary_infer(url: str, model: str, array: np.ndarray, timeout: float = 120) -> requests.Response:
    body, headers = encode_request([wire_tensor("x", array)], binary_inputs=True, binary_outputs=True)
    return requests.post(f"{url}/v2/models/{model}/versions/original/infer", data=body, headers=headers, timeout=timeout)


def output_of(response: requests.Response) -> np.ndarray:
    _, tensors = decode_response(response.content, response.headers.get("Inference-Header-Content-Length"))
    return tensors[0].array


def zeros_json(rows: int) -> bytes:
    """A /predict body of `rows` x 16 zeros: the most numbers per byte JSON allows, so the costliest to parse."""
    row = "[" + ",".join("0" * 16) + "]"
    return ('{"model":"mlp","variant":"original","inputs":[[' + ",".join([row] * rows) + "]]}").encode()


def segments_of(server) -> list[Path]:
    return list(SHM_DIR.glob(prefix_for(server.store) + "*"))


# ---- JSON bodies ----


def test_json_bodies_over_max_json_bytes_get_413_that_points_to_the_binary_protocol(server, mlp):
    too_big = zeros_json(MAX_JSON // 34 + 100)
    assert MAX_JSON < len(too_big) < 96 * 2**20
    for path in ("/predict", "/compare", "/v2/models/mlp/infer"):
        response = requests.post(server.url + path, data=too_big, headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 413, (path, response.text)
        message = response.json()["error"] if path.startswith("/v2") else response.json()["error"]["message"]
        assert "OPTISERVE_MAX_JSON_BYTES" in message and "binary" in message, message
    # The limit is on the JSON: a /v2 binary body of the same size is served.
    x = np.zeros((len(too_big) // 64, 16), dtype=np.float32)
    response = binary_infer(server.url, "mlp", x)
    assert response.status_code == 200, response.text


def test_a_large_json_body_below_the_limit_is_answered_like_a_small_one(server, mlp):
    x = torch.randn(6000, 16)  # ~1.3 MB of JSON: parsed in the worker, not the API server
    body = {"model": "mlp", "variant": "original", "inputs": [x.tolist()]}
    response = requests.post(server.url + "/predict", json=body, headers={"X-Routing-Key": "k"}, timeout=60)
    assert response.status_code == 200, response.text
    with torch.inference_mode():
        expected = mlp(x)
    got = torch.tensor(response.json()["outputs"][0]["data"]).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Bad large bodies get the same 422 as bad small ones.
    for extra in ({"fast": True}, {}):
        small = {"model": "mlp", "inputs": [[[0.0] * 16]], **extra}
        large = {**small, "inputs": [[[0.0] * 16] * 6000], **extra}
        if not extra:
            small["inputs"] = large["inputs"] = []
        answers = [requests.post(server.url + "/predict", json=b, timeout=60) for b in (small, large)]
        assert [a.status_code for a in answers] == [422, 422], [a.text for a in answers]
        assert answers[0].json()["error"]["message"] == answers[1].json()["error"]["message"]
    broken = b'{"model": "mlp", "inputs": [[' + b"[0.5]," * 20000 + b"]]"
    answer = requests.post(server.url + "/predict", data=broken, timeout=60)
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["error"]["message"], answer.text
    # /v2 with a large JSON body: decoded in the worker, same answer as through the API server.
    document = {"inputs": [{"name": "x", "shape": [6000, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    response = requests.post(server.url + "/v2/models/mlp/versions/original/infer", json=document, timeout=60)
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["outputs"][0]["data"]).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    document["inputs"][0]["shape"] = [6000, 15]
    response = requests.post(server.url + "/v2/models/mlp/infer", json=document, timeout=60)
    assert response.status_code == 400 and "needs 90000" in response.json()["error"], response.text


def test_health_answers_while_a_max_size_json_predict_and_a_large_binary_v2_are_in_flight(server, mlp):
    body = zeros_json(MAX_JSON // 34 - 10)
    assert MAX_JSON - 2000 < len(body) <= MAX_JSON
    x = np.random.default_rng(0).standard_normal((48 * 2**20 // 64, 16), dtype=np.float32)  # 48 MiB
    waits = []
    with ThreadPoolExecutor(2) as pool:
        big_json = pool.submit(requests.post, server.url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=120)
        big_binary = pool.submit(binary_infer, server.url, "mlp", x)
        while not (big_json.done() and big_binary.done()):
            for path in ("/health", "/ready"):
                started = time.monotonic()
                try:
                    answer = requests.get(server.url + path, timeout=HEALTH_TIMEOUT)
                except requests.Timeout:
                    pytest.fail(f"{path} did not answer within {HEALTH_TIMEOUT} s while large requests were processed")
                assert answer.status_code == 200
                waits.append(time.monotonic() - started)
        assert big_json.result().status_code == 200, big_json.result().text
        assert big_binary.result().status_code == 200, big_binary.result().text
    assert len(waits) >= 4, "the large requests finished before /health could be asked during them"
    print(f"/health and /ready during the large requests: {len(waits)} answers, max {max(waits) * 1000:.1f} ms, "
          f"median {sorted(waits)[len(waits) // 2] * 1000:.1f} ms")


# ---- supervision ----


def serving_pid(server) -> int:
    """The process that holds the server's end of a connection of ours: an API server."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b" 200 " in sock.recv(4096)
        ours = sock.getsockname()[1]
        wanted = (f"0100007F:{server.port:04X}", f"0100007F:{ours:04X}")
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        (inode,) = [fields[9] for fields in map(str.split, lines) if (fields[1], fields[2]) == wanted]
        for pid in server.forked_children():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
    raise AssertionError("no process of the server holds the connection")


def kill_the_serving_api_server(server) -> int:
    """kill -9 the API server that holds a connection, then wait until /health answers again; its pid."""
    victim = serving_pid(server)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, f"/health never answered again after the API server died:\n{server.log_tail()}"
        try:
            if requests.get(server.url + "/health", timeout=HEALTH_TIMEOUT).status_code == 200:
                break
        except (requests.Timeout, requests.ConnectionError):
            pass
    return victim


def test_an_api_server_killed_with_sigkill_is_restarted_and_serves_again(server, mlp):
    victim = kill_the_serving_api_server(server)
    replacement = serving_pid(server)
    assert replacement != victim
    assert f"(pid {victim}) died (signal SIGKILL); restarting it" in server.log_path.read_text()


def test_inference_answers_reach_an_api_server_restarted_after_sigkill(server, mlp):
    x = torch.randn(3, 16)
    for _ in range(2):  # the second restart reads a response queue a dead server read before
        kill_the_serving_api_server(server)
        # Asked at once: the dead server's last get of answers may still be pending in LitServe's manager.
        response = requests.post(server.url + "/predict", json={"model": "mlp", "variant": "original", "inputs": [x.tolist()]}, timeout=20)
        assert response.status_code == 200, response.text
        assert binary_infer(server.url, "mlp", np.zeros((8000, 16), np.float32)).status_code == 200


# ---- shared memory ----


def test_past_the_shm_budget_small_tensors_take_the_queue_and_large_ones_get_503_shm_full(tight, widen):
    x = np.random.default_rng(1).standard_normal((3 * 2**20 // 64, 16), dtype=np.float32)  # 3 MiB in, 24 MiB out
    narrow = x[: 2**20 // 256]  # 0.25 MiB in, 2 MiB out: over the 1 MiB budget, under the queue's fallback size
    response = binary_infer(tight.url, "widen", narrow)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(output_of(response), np.tile(narrow, 8) * 2)
    # 24 MiB of answer finds no room, and is too large for the queue.
    response = binary_infer(tight.url, "widen", x)
    assert response.status_code == 503 and "shared memory" in response.json()["error"] and "retry" in response.json()["error"], response.text
    # 20 MiB of request: the same, before it reaches a worker.
    response = binary_infer(tight.url, "widen", np.zeros((20 * 2**20 // 64, 16), np.float32))
    assert response.status_code == 503 and "OPTISERVE_SHM_BUDGET_BYTES" in response.json()["error"], response.text
    assert requests.get(tight.url + "/health", timeout=10).status_code == 200
    assert not segments_of(tight)


def test_sharing_past_a_budget_raises_shm_full_and_leaves_no_file(tmp_path):
    space = SharedSpace("optiserve-test-", budget=2**20, directory=tmp_path)
    kept = space.share([b"\x01" * 600_000])
    with pytest.raises(ShmFull, match="budget"):
        space.share([b"\x02" * 600_000])
    assert [p.name for p in tmp_path.iterdir()] == [Path(kept.path).name]
    assert kept.read() == b"\x01" * 600_000
    kept.unlink()
    assert space.share([b"\x03" * 600_000]).read() == b"\x03" * 600_000


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "shm"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here, which needs root with CAP_SYS_ADMIN ({result.stderr.strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


SIGBUS_WRITER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 3 * 2**20)
view = mmap.mmap(fd, 3 * 2**20)
view[:] = b"x" * (3 * 2**20)
"""


def test_sharing_into_a_tmpfs_without_room_raises_shm_full_instead_of_sigbus(small_tmpfs):
    # What a segment written without reserving it does on a full tmpfs (Docker's 64 MiB /dev/shm):
    crashed = subprocess.run([sys.executable, "-c", SIGBUS_WRITER, str(small_tmpfs / "naive")])
    assert crashed.returncode == -signal.SIGBUS
    (small_tmpfs / "naive").unlink()
    space = SharedSpace("optiserve-test-", budget=2**40, directory=small_tmpfs)
    with pytest.raises(ShmFull, match="no room"):
        space.share([bytes(3 * 2**20)])
    assert list(small_tmpfs.iterdir()) == []
    fits = space.share([b"\x07" * 500_000])
    assert fits.read() == b"\x07" * 500_000
