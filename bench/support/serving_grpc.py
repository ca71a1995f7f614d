"""bench/serving.py's rows for OIP over gRPC: tritonclient.grpc (raw_input_contents), one client per
thread, against REST binary in the same table (measure() hands each caller a requests.Session, which
a gRPC caller ignores). Its targets list also carries the first-request row (serving_first_request.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import requests
import torch

from server_harness import free_port

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
