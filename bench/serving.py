"""Serving benchmark: p50/p99 latency and throughput at concurrency 1 and 8, through the server and
in-process, for a small and a mid-size model; then what the Python client costs per MB of tensors.

    python bench/serving.py [--seconds 4]

"server" = OptiserveClient.predict (binary tensors) against a real `python -m server` on 127.0.0.1;
"in-process" = the same TorchScript file called directly, with the same torch thread count as a
worker. Both take one sample per request. Prints a table and writes bench/results/serving.json.
Timings on these shared 2-core machines drift between runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.models import ResNetSmall  # noqa: E402
from clients import OptiserveClient  # noqa: E402
from optimizer_pipeline.allocator import pin_malloc_thresholds  # noqa: E402
from optimizer_pipeline.files import atomic_write_text  # noqa: E402
from server_harness import FORCED_FREEZE, ServerProcess  # noqa: E402
from tiny_models import MLP, calibration_bytes  # noqa: E402

# The server's defaults (one /predict worker, batches of up to 16 within 2 ms), one torch thread
# per worker; in-process calls get the same thread count.
WORKER_THREADS = 1
SERVER_ENV = {
    "OPTISERVE_WORKERS": "1",
    "OPTISERVE_WORKER_THREADS": str(WORKER_THREADS),
    "OPTISERVE_MAX_BATCH_SIZE": "16",
    "OPTISERVE_BATCH_TIMEOUT_MS": "2",
    "OPTISERVE_MAX_UPLOAD_BYTES": str(256 * 2**20),
}
PAYLOAD_MB = (0.25, 1, 4, 16)
JSON_PAYLOAD_MB = (0.25, 1, 4)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def traced(model: nn.Module, sample: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), (sample,)), buffer)
    return buffer.getvalue()


def models() -> dict[str, tuple[bytes, torch.Tensor, str]]:
    torch.manual_seed(0)
    return {
        "small": (traced(MLP(), torch.randn(32, 16)), torch.randn(32, 16), "MLP 16-64-64-4, 5.5k params"),
        "mid": (
            traced(ResNetSmall(channels=3, width=32), torch.randn(32, 3, 32, 32)),
            torch.randn(32, 3, 32, 32),
            "ResNet (3 blocks), 0.3M params, 3x32x32 input",
        ),
    }


def measure(call: Callable[[torch.Tensor], object], sample: torch.Tensor, concurrency: int, seconds: float) -> dict:
    """Each of `concurrency` threads calls back to back for `seconds`; latencies of every call."""
    for _ in range(10):
        call(sample)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call(sample)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "throughput_rps": round(len(ordered) / wall, 1),
    }


def in_process_caller(archive: bytes) -> Callable[[torch.Tensor], object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(archive))

    def call(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(x)

    return call


def server_caller(url: str, name: str) -> Callable[[torch.Tensor], object]:
    local = threading.local()  # a requests.Session per thread

    def call(x: torch.Tensor) -> object:
        if not hasattr(local, "client"):
            local.client = OptiserveClient(url)
        return local.client.predict(name, x, variant="original")

    return call


def latency_table(url: str, seconds: float) -> list[dict]:
    rows = []
    uploader = OptiserveClient(url)
    for name, (archive, calibration, description) in models().items():
        accepted = uploader.upload(archive, calibration_bytes((calibration,)), config=FORCED_FREEZE, name=name)
        uploader.wait(accepted.id, timeout=300, progress=False)  # no optimization competing with the timing
        sample = calibration[:1]
        callers = {"in-process": in_process_caller(archive), "server": server_caller(url, name)}
        for concurrency in (1, 8):
            for path, call in callers.items():
                row = {"model": name, "description": description, "path": path, "concurrency": concurrency}
                row.update(measure(call, sample, concurrency, seconds))
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def payload_cost(url: str) -> dict:
    """Median round trip of an identity model vs tensor size; the slope is the cost per MB."""
    client = OptiserveClient(url)
    archive = traced(Identity(), torch.randn(4, 256))
    client.wait(client.upload(archive, calibration_bytes((torch.randn(4, 256),)), config=FORCED_FREEZE, name="identity").id, progress=False)
    import requests

    def binary(x: torch.Tensor) -> object:
        return client.predict("identity", x, variant="original")

    def json_lists(x: torch.Tensor) -> object:
        body = {"model": "identity", "variant": "original", "inputs": [x.tolist()]}
        return requests.post(url + "/predict", json=body, timeout=300).json()

    result = {}
    for label, call, sizes in (("binary (client)", binary, PAYLOAD_MB), ("JSON lists (raw HTTP)", json_lists, JSON_PAYLOAD_MB)):
        points = []
        for megabytes in sizes:
            x = torch.randn(int(megabytes * 2**20 / 4 / 256), 256)
            call(x)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                call(x)
                times.append(time.perf_counter() - started)
            points.append((megabytes, 1000 * statistics.median(times)))
        result[label] = {"points_ms": {str(mb): round(ms, 1) for mb, ms in points}, "ms_per_mb": round(slope(points), 1)}
        print(f"{label}: {result[label]}", flush=True)
    return result


def slope(points: list[tuple[float, float]]) -> float:
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)


def format_row(row: dict) -> str:
    return (
        f"| {row['model']} | {row['path']} | {row['concurrency']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
        f"{row['throughput_rps']:.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per table cell")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    args = parser.parse_args()
    torch.set_num_threads(WORKER_THREADS)
    pin_malloc_thresholds()  # as the server's workers do, so the in-process baseline is like for like
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "store", SERVER_ENV).start()
        try:
            print("| model | path | concurrency | p50 ms | p99 ms | requests/s |\n|---|---|---|---|---|---|", flush=True)
            rows = latency_table(server.url, args.seconds)
            payload = payload_cost(server.url)
        finally:
            server.stop()
    results = {
        "torch": torch.__version__,
        "worker_threads": WORKER_THREADS,
        "server_env": SERVER_ENV,
        "seconds_per_cell": args.seconds,
        # Other work on the machine inflates every number; this says how busy it was.
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "latency": rows,
        "client_payload_cost": payload,
    }
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
