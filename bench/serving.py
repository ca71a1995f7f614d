"""Serving benchmark: optiserve against a bare LitServe server and a bare FastAPI route, side by side.

    python bench/serving.py [--seconds 3] [--rounds 3] [--only mid | mid-defaults [--busy N] | residency | first-request]

Every server runs in its own process and serves the same TorchScript file with one worker and one
torch thread; the measurements take turns (round after round, each server in turn) and each cell
is the median over rounds. Bodies are built before timing, so every server pays the same client.

- latency: p50 at concurrency 1, and the overhead (p50 minus the in-process p50);
  requests/s at concurrency 8, one sample per request;
- cost per MB of tensor (an identity model, input and output the same size), 1 to 16 MB:
  raw bytes to the bare FastAPI route (the floor), tritonclient and OptiserveClient (binary),
  OIP JSON number lists encoded and decoded by wire/;
- the server's peak RSS growth for one 64 MB input;
- OIP over gRPC beside REST (support/serving_grpc.py), the first request after ready (serving_first_request.py).

Prints the tables and the issue's targets, and writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import requests
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.support.models import ResNetSmall  # noqa: E402
from clients import OptiserveClient  # noqa: E402
from optimizer_pipeline.measure.allocator import pin_malloc_thresholds  # noqa: E402
from optimizer_pipeline.files import atomic_write_text  # noqa: E402
from bench.support.serving_batching import only_mid  # noqa: E402
from bench.support.serving_residency import residency  # noqa: E402
from bench.support.serving_first_request import first_request_rounds, first_request_row  # noqa: E402
from bench.support.serving_grpc import GRPC_ENV, grpc_caller, grpc_targets  # noqa: E402
from server_harness import API_KEY, FORCED_FREEZE, ServerProcess, free_port, upload, wait_for  # noqa: E402
from tiny_models import MLP, calibration_bytes  # noqa: E402
from wire import decode_response, encode_request  # noqa: E402
from wire.codec import HEADER_LENGTH, wire_tensor  # noqa: E402

WORKER_THREADS = 1
SERVER_ENV = {
    "OPTISERVE_API_KEY": API_KEY,
    "OPTISERVE_WORKERS": "1",
    "OPTISERVE_WORKER_THREADS": str(WORKER_THREADS),
    "OPTISERVE_MAX_BATCH_SIZE": "16",
    "OPTISERVE_MAX_UPLOAD_BYTES": str(512 * 2**20),
    # The payload table sends 16 MB of float32 as JSON number lists (about 80 MB of text): the default
    # limit (8 MiB) answers that with 413, which is right for a server and no measurement for a bench.
    "OPTISERVE_MAX_JSON_BYTES": str(256 * 2**20),
    **GRPC_ENV,
}
PAYLOAD_MB = (1, 4, 16)
RSS_PROBE_MB = 64
BASELINES = {"FastAPI (bare)": "bare_fastapi.py", "LitServe (bare)": "bare_litserve.py"}


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def traced(model: nn.Module, sample: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model.eval(), (sample,)), buffer)
    return buffer.getvalue()


def models() -> dict[str, tuple[bytes, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "small": (traced(MLP(), torch.randn(32, 16)), torch.randn(32, 16)),
        "mid": (traced(ResNetSmall(channels=3, width=32), torch.randn(32, 3, 32, 32)), torch.randn(32, 3, 32, 32)),
        "identity": (traced(Identity(), torch.randn(4, 256)), torch.randn(4, 256)),
    }


DESCRIPTIONS = {"small": "MLP 16-64-64-4, 5.5k params", "mid": "ResNet (3 blocks), 0.3M params, 3x32x32"}


# ---- servers ----


@contextmanager
def baseline_server(script: str, model_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "bench" / "baselines" / script), str(model_path), str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, f"{script} did not start"
            try:
                if requests.get(url + "/openapi.json", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, 9)
        process.wait()


# ---- callers: one prebuilt request, posted back to back ----

Call = Callable[[requests.Session], None]


def poster(url: str, body: bytes, headers: dict[str, str] | None = None) -> Call:
    def call(session: requests.Session) -> None:
        response = session.post(url, data=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text[:300]

    return call


def json_tensor(x: torch.Tensor) -> dict:
    return {"shape": list(x.shape), "data": x.reshape(-1).tolist()}


def server_callers(name: str, sample: torch.Tensor, bare: dict[str, str], optiserve: str, input_name: str) -> dict[str, Call]:
    bare_body = json.dumps(json_tensor(sample)).encode()
    predict_body = json.dumps({"model": name, "variant": "original", "inputs": [{**json_tensor(sample), "datatype": "FP32"}]}).encode()
    v2_json = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", **json_tensor(sample)}]}).encode()
    v2_binary, v2_headers = encode_request([wire_tensor(input_name, sample.numpy())])
    infer = f"{optiserve}/v2/models/{name}/versions/original/infer"
    return {
        **{label: poster(url + "/predict", bare_body, {"Content-Type": "application/json"}) for label, url in bare.items()},
        "optiserve /predict JSON": poster(optiserve + "/predict", predict_body, {"Content-Type": "application/json"}),
        "optiserve /v2 JSON": poster(infer, v2_json),
        "optiserve /v2 binary": poster(infer, v2_binary, v2_headers),
        "optiserve gRPC (tritonclient.grpc)": grpc_caller(name, sample, input_name),
    }


def measure(call: Call, concurrency: int, seconds: float) -> dict:
    """`concurrency` threads post back to back for `seconds`; p50 and requests/s."""
    warm = requests.Session()
    for _ in range(20):
        call(warm)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        session, mine = requests.Session(), []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call(session)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"p50_ms": 1000 * statistics.median(latencies), "rps": len(latencies) / (time.perf_counter() - started)}


def in_process(archive: bytes, sample: torch.Tensor, repeats: int = 300) -> float:
    """Median ms of one direct call, with the worker's thread count."""
    module, times = torch.jit.load(io.BytesIO(archive)), []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            module(sample)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[repeats // 10 :])


# ---- tables ----


def latency_table(archives: dict, bare_urls: dict, optiserve: str, input_names: dict, seconds: float, rounds: int) -> list[dict]:
    rows = []
    for name in ("small", "mid"):
        archive, calibration = archives[name]
        sample = calibration[:1]
        callers = server_callers(name, sample, bare_urls[name], optiserve, input_names[name])
        cells: dict[tuple[str, int], list[dict]] = {}
        for _ in range(rounds):  # taking turns: each server once per round
            for label, call in callers.items():
                for concurrency in (1, 8):
                    cells.setdefault((label, concurrency), []).append(measure(call, concurrency, seconds))
        direct_ms = in_process(archive, sample)
        batch8_ms = in_process(archive, calibration[:8])
        print(f"\n{name}: {DESCRIPTIONS[name]}; in-process p50 {direct_ms:.3f} ms (batch 1), {batch8_ms:.3f} ms (batch 8)")
        print("| path | p50 ms, c=1 | overhead ms | requests/s, c=8 |\n|---|---|---|---|")
        for label in callers:
            p50 = statistics.median(cell["p50_ms"] for cell in cells[(label, 1)])
            rps = statistics.median(cell["rps"] for cell in cells[(label, 8)])
            row = {"model": name, "path": label, "p50_ms": round(p50, 3), "overhead_ms": round(p50 - direct_ms, 3), "rps_c8": round(rps, 1)}
            row.update(in_process_ms=round(direct_ms, 3), in_process_batch8_samples_per_s=round(8000 / batch8_ms, 1))
            rows.append(row)
            print(f"| {label} | {p50:.2f} | {p50 - direct_ms:.2f} | {rps:.0f} |", flush=True)
    return rows


def payload_table(identity_bare: str, optiserve: str, input_name: str, rounds: int) -> dict:
    import tritonclient.http as triton

    client = OptiserveClient(optiserve, timeout=300, api_key=API_KEY)
    triton_client = triton.InferenceServerClient(optiserve.removeprefix("http://"), network_timeout=300, connection_timeout=300)
    infer = f"{optiserve}/v2/models/identity/versions/original/infer"

    def raw_floor(x: torch.Tensor) -> None:
        response = requests.post(identity_bare + "/raw", data=x.numpy().tobytes(), headers={"X-Shape": ",".join(map(str, x.shape))}, timeout=300)
        np.frombuffer(response.content, dtype=np.float32)

    def tritonclient_binary(x: torch.Tensor) -> None:
        item = triton.InferInput(input_name, list(x.shape), "FP32")
        item.set_data_from_numpy(x.numpy(), binary_data=True)
        result = triton_client.infer("identity", [item], model_version="original")
        result.as_numpy(result.get_response()["outputs"][0]["name"])

    def optiserve_client(x: torch.Tensor) -> None:
        client.predict("identity", x, variant="original")

    def oip_json(x: torch.Tensor) -> None:
        # Through the wire package, both ways: what OptiserveClient would pay with JSON tensors.
        body, headers = encode_request([wire_tensor(input_name, x.numpy())], binary_inputs=False, binary_outputs=False)
        response = requests.post(infer, data=body, headers=headers, timeout=300)
        decode_response(response.content, response.headers.get(HEADER_LENGTH))

    paths = {
        "raw bytes, FastAPI (floor)": raw_floor,
        "tritonclient, binary": tritonclient_binary,
        "OptiserveClient, binary": optiserve_client,
        "OIP JSON number lists (wire/)": oip_json,
    }
    samples: dict[str, dict[int, list[float]]] = {label: {mb: [] for mb in PAYLOAD_MB} for label in paths}
    for _ in range(rounds):
        for megabytes in PAYLOAD_MB:
            x = torch.randn(megabytes * 2**20 // 4 // 256, 256)
            for label, call in paths.items():
                call(x)
                for _ in range(3):
                    started = time.perf_counter()
                    call(x)
                    samples[label][megabytes].append(1000 * (time.perf_counter() - started))
    result = {}
    print("\n| path | " + " | ".join(f"{mb} MB ms" for mb in PAYLOAD_MB) + " | ms/MB |\n|---|" + "---|" * (len(PAYLOAD_MB) + 1))
    for label in paths:
        points = [(mb, statistics.median(samples[label][mb])) for mb in PAYLOAD_MB]
        result[label] = {"points_ms": {str(mb): round(ms, 1) for mb, ms in points}, "ms_per_mb": round(slope(points), 2)}
        print(f"| {label} | " + " | ".join(f"{ms:.1f}" for _, ms in points) + f" | {slope(points):.2f} |", flush=True)
    return result


def slope(points: list[tuple[float, float]]) -> float:
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)


def peak_rss_growth(server: ServerProcess, input_name: str) -> float:
    """MB by which the server's processes' peak RSS (VmHWM) grows over one 64 MB input's round trip."""
    x = np.random.rand(RSS_PROBE_MB * 2**20 // 4 // 256, 256).astype(np.float32)
    body, headers = encode_request([wire_tensor(input_name, x)])
    before = _peaks(server)
    response = requests.post(f"{server.url}/v2/models/identity/versions/original/infer", data=body, headers=headers, timeout=300)
    assert response.status_code == 200, response.text[:300]
    after = _peaks(server)
    return sum(after[pid] - before.get(pid, 0) for pid in after) / 1024


def _peaks(server: ServerProcess) -> dict[int, int]:
    """VmHWM (KiB) of every process of the server's group."""
    peaks = {}
    for line in server.group_processes():
        pid = int(line.split()[0])
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        peaks[pid] = next((int(row.split()[1]) for row in status.splitlines() if row.startswith("VmHWM:")), 0)
    return peaks


# ---- the run ----


def upload_all(server: ServerProcess, archives: dict) -> dict[str, str]:
    """Upload every model (exact freeze, so no long job competes with the timing); their input names."""
    client = OptiserveClient(server.url, timeout=300, api_key=API_KEY)
    names = {}
    for name, (archive, calibration) in archives.items():
        client.wait(client.upload(archive, calibration_bytes((calibration,)), config=FORCED_FREEZE, name=name).id, timeout=600, progress=False)
        names[name] = requests.get(f"{server.url}/v2/models/{name}", timeout=30).json()["inputs"][0]["name"]
    return names


def targets(rows: list[dict], payload: dict, rss_mb: float) -> list[str]:
    cell = {(row["model"], row["path"]): row for row in rows}
    small = lambda path: cell[("small", path)]  # noqa: E731
    litserve, fastapi = small("LitServe (bare)"), small("FastAPI (bare)")
    lines = []
    for path in ("optiserve /v2 binary", "optiserve /v2 JSON", "optiserve /predict JSON"):
        over = small(path)["overhead_ms"]
        lines.append(
            f"small, c=1, {path}: overhead {over:.2f} ms against bare LitServe's {litserve['overhead_ms']:.2f} + 0.3 "
            f"-> {'met' if over <= litserve['overhead_ms'] + 0.3 else 'MISSED'}; moonshot (bare FastAPI's {fastapi['overhead_ms']:.2f}) "
            f"{'met' if over <= fastapi['overhead_ms'] else 'missed'}"
        )
    for path in ("optiserve /v2 binary", "optiserve /predict JSON"):
        rps = small(path)["rps_c8"]
        lines.append(f"small, c=8, {path}: {rps:.0f} requests/s against bare LitServe's {litserve['rps_c8']:.0f} -> {'met' if rps >= litserve['rps_c8'] else 'MISSED'}")
    mid = cell[("mid", "optiserve /v2 binary")]
    share = mid["rps_c8"] / mid["in_process_batch8_samples_per_s"]
    lines.append(f"mid, c=8, /v2 binary: {mid['rps_c8']:.0f} samples/s = {share:.0%} of in-process batch 8 -> {'met' if share >= 0.8 else 'MISSED'}")
    floor = payload["raw bytes, FastAPI (floor)"]["ms_per_mb"]
    for path in ("tritonclient, binary", "OptiserveClient, binary"):
        cost = payload[path]["ms_per_mb"]
        lines.append(f"{path}: {cost:.2f} ms/MB = {cost / floor:.2f}x the raw floor ({floor:.2f}) -> {'met' if cost <= 1.5 * floor else 'MISSED'}")
    json_cost = payload["OIP JSON number lists (wire/)"]["ms_per_mb"]
    lines.append(f"OIP JSON number lists: {json_cost:.1f} ms/MB against 150 -> {'met' if json_cost <= 150 else 'MISSED'}")
    lines.append(f"64 MB input: peak RSS +{rss_mb:.0f} MB against {3 * RSS_PROBE_MB} MB -> {'met' if rss_mb <= 3 * RSS_PROBE_MB else 'MISSED'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns; cells are medians over rounds")
    parser.add_argument("--out", type=Path, help="default: bench/results/serving.json (serving_mid.json, serving_mid_defaults.json with --only)")
    parser.add_argument("--only", choices=["mid", "mid-defaults", "residency", "first-request"], help="one part, on its own: see the "
                        "docstrings of support/serving_batching.py (mid, mid-defaults), serving_residency.py, serving_first_request.py")
    parser.add_argument("--busy", type=int, default=0, help="with --only mid or mid-defaults: processes kept spinning meanwhile")
    args = parser.parse_args()
    if args.only == "residency":  # the server's defaults: two workers, as a user starts it
        return residency(ServerProcess, {"OPTISERVE_API_KEY": API_KEY}, upload, wait_for, FORCED_FREEZE, args.out)
    if args.only == "first-request":
        return first_request_rounds(ServerProcess, {"OPTISERVE_API_KEY": API_KEY}, upload, wait_for, FORCED_FREEZE, *models()["mid"], args.rounds, args.out)
    torch.set_num_threads(WORKER_THREADS)
    pin_malloc_thresholds()  # as the servers do, so the in-process baseline is like for like
    load_before = os.getloadavg()[0]
    archives = models()
    with tempfile.TemporaryDirectory() as folder, ExitStack() as servers:
        paths = {}
        for name, (archive, _) in archives.items():
            paths[name] = Path(folder) / f"{name}.pt"
            paths[name].write_bytes(archive)
        if args.only:
            return only_mid(args, archives, ServerProcess(Path(folder) / "store", SERVER_ENV), upload_all, server_callers, measure)
        bare = {name: {label: servers.enter_context(baseline_server(script, paths[name])) for label, script in BASELINES.items()} for name in archives}
        optiserve = ServerProcess(Path(folder) / "store", SERVER_ENV).start()
        servers.callback(optiserve.stop)
        input_names = upload_all(optiserve, archives)
        rss_mb = peak_rss_growth(optiserve, input_names["identity"])  # first, before smaller payloads raise the peaks
        rows = latency_table(archives, bare, optiserve.url, input_names, args.seconds, args.rounds)
        first_request = first_request_row(optiserve, upload, wait_for, FORCED_FREEZE, *archives["mid"])
        payload = payload_table(bare["identity"]["FastAPI (bare)"], optiserve.url, input_names["identity"], args.rounds)
    checks = targets(rows, payload, rss_mb) + grpc_targets(rows, first_request)
    print("\n" + "\n".join(checks))
    results = {
        "torch": torch.__version__,
        "worker_threads": WORKER_THREADS,
        "server_env": {key: value for key, value in SERVER_ENV.items() if key != "OPTISERVE_API_KEY"},
        "seconds_per_cell": args.seconds,
        "rounds": args.rounds,
        # Other work on the machine inflates every number; this says how busy it was.
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "latency": rows,
        "payload_cost": payload,
        "rss_growth_mb_for_64mb_input": round(rss_mb, 1),
        "first_request_after_ready": first_request,
        "targets": checks,
    }
    atomic_write_text(out := args.out or REPO / "bench" / "results" / "serving.json", json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
