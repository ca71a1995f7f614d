"""bench/serving.py's rows for OIP over gRPC and for the first request after ready.

- gRPC: tritonclient.grpc (raw_input_contents), one client per thread, against REST binary in the
  same table (measure() hands each caller a requests.Session, which a gRPC caller ignores).
- First request: a fresh upload, /v2/models/{m}/ready polled until true, then the first request's
  latency against the median of the next 20 (the issue's check: within 3x).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import requests
import torch

from server_harness import FORCED_FREEZE, ServerProcess, free_port, upload, wait_for

GRPC_PORT = free_port()
GRPC_ENV = {"OPTISERVE_GRPC_PORT": str(GRPC_PORT)}


def grpc_caller(name: str, sample: torch.Tensor, input_name: str) -> Callable[[requests.Session], None]:
    import tritonclient.grpc as triton

    local = threading.local()
    array = np.ascontiguousarray(sample.numpy())

    def call(session: requests.Session) -> None:
        if not hasattr(local, "client"):
            local.client = triton.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
            local.inputs = [triton.InferInput(input_name, list(array.shape), "FP32")]
            local.inputs[0].set_data_from_numpy(array)
        local.client.infer(name, local.inputs, model_version="original")

    return call


def first_request_row(server: ServerProcess, archive: bytes, calibration: torch.Tensor, following: int = 20) -> dict:
    """Upload `archive` afresh, wait until /v2 says ready, and time its first request against the next ones."""
    accepted = upload(server.url, archive, (calibration,), name="first-request", config=FORCED_FREEZE)
    assert accepted.status_code == 202, accepted.text
    wait_for(server.url, accepted.json()["id"], timeout=600)
    deadline = time.monotonic() + 120
    while not requests.get(f"{server.url}/v2/models/first-request/ready", timeout=10).json()["ready"]:
        assert time.monotonic() < deadline, "the model never said ready"
        time.sleep(0.05)
    body = {"model": "first-request", "inputs": [{"shape": [1, *calibration.shape[1:]], "datatype": "FP32", "data": calibration[:1].reshape(-1).tolist()}]}
    times = []
    with requests.Session() as session:
        session.get(server.url + "/v2/health/live", timeout=10)  # the connection is open before the clock starts
        for _ in range(1 + following):
            started = time.perf_counter()
            assert session.post(server.url + "/predict", json=body, timeout=120).status_code == 200
            times.append(1000 * (time.perf_counter() - started))
    first, steady = times[0], statistics.median(times[1:])
    print(f"\nfirst request after ready: {first:.2f} ms; median of the next {following}: {steady:.2f} ms ({first / steady:.2f}x)", flush=True)
    return {"first_ms": round(first, 3), "steady_p50_ms": round(steady, 3), "ratio": round(first / steady, 2)}


def grpc_targets(rows: list[dict], first_request: dict) -> list[str]:
    cell = {(row["model"], row["path"]): row for row in rows}
    lines = []
    for model in ("small", "mid"):
        rest, grpc = cell[(model, "optiserve /v2 binary")], cell[(model, "optiserve gRPC (tritonclient.grpc)")]
        lines.append(
            f"{model}, gRPC (tritonclient.grpc) against REST /v2 binary: p50 {grpc['p50_ms']:.2f} vs {rest['p50_ms']:.2f} ms, "
            f"{grpc['rps_c8']:.0f} vs {rest['rps_c8']:.0f} requests/s at c=8"
        )
    ratio = first_request["ratio"]
    lines.append(f"first request after ready: {ratio:.2f}x the next 20's median against 3x -> {'met' if ratio <= 3 else 'MISSED'}")
    return lines
