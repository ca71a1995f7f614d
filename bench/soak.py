"""Chaos soak: a real server under steady traffic while its workers are killed with kill -9, routing
flips, and models are replaced and deleted underneath the clients.

    python bench/soak.py [--seconds 600] [--clients 4] [--chaos-every 15]

Traffic: `/predict` JSON, `/v2` JSON and `/v2` binary (tritonclient, unchanged) over two models that
always exist plus a third that is deleted and uploaded again. Chaos, in turn: kill -9 an inference
worker, flip the routing of a model (pinned / split / shadow), replace a model, delete and re-upload
the third one. At the end it checks what must hold after any amount of chaos:
- every failed request is explained (a kill -9 may fail the requests its worker held, a deleted
  model answers 404), and nothing else failed;
- the server's own request counter matches the client's count of answers, per status;
- resident memory, open file descriptors and /dev/shm segments did not grow between the first and
  the last quarter of the run.

Prints a table and writes bench/results/soak.json. Exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import requests  # noqa: E402
import tritonclient.http as triton  # noqa: E402

import tiny_models  # noqa: E402
from optimizer_pipeline.files import atomic_write_text  # noqa: E402
from server_harness import AUTH, FORCED_FREEZE, ServerProcess, metric_value, upload, wait_for  # noqa: E402

STEADY = ("steady-mlp", "steady-cnn")
CHURNED = "churned"
# Statuses a request may get while its model is deleted and uploaded again, or its worker is killed.
CHURN_STATUSES = {404, 409}
KILL_STATUSES = {500, 502, 503, 504}


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Counter[tuple[str, str, int]] = Counter()  # (endpoint, model, status)
        self.errors: Counter[str] = Counter()

    def add(self, endpoint: str, model: str, status: int) -> None:
        with self.lock:
            self.by_status[(endpoint, model, status)] += 1

    def transport_error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


def client_loop(url: str, stop: threading.Event, tally: Tally, inputs: dict, names: dict, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    binary = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    while not stop.is_set():
        model = rng.choice([*STEADY, CHURNED])
        x = inputs[model]
        kind = rng.choice(("predict", "v2-json", "v2-binary"))
        try:
            if kind == "predict":
                body = {"model": model, "inputs": [{"shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
                status = session.post(url + "/predict", json=body, timeout=120).status_code
                tally.add("/predict", model, status)
            elif kind == "v2-json":
                body = {"inputs": [{"name": names[model], "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
                status = session.post(f"{url}/v2/models/{model}/infer", json=body, timeout=120).status_code
                tally.add("/v2/models/{model}/infer", model, status)
            else:
                tensor = triton.InferInput(names[model], list(x.shape), "FP32")
                tensor.set_data_from_numpy(x.numpy().astype(np.float32), binary_data=True)
                try:
                    binary.infer(model, [tensor])
                    status = 200
                except triton.InferenceServerException as exc:
                    status = int(exc.status() or 0) if str(exc.status() or "").isdigit() else 0
                tally.add("/v2/models/{model}/infer", model, status)
        except requests.RequestException as exc:
            tally.transport_error(type(exc).__name__)


def worker_pids(server: ServerProcess) -> list[int]:
    """Inference workers: spawned children of the main process (LitServe starts them with spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent == server.process.pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def group_footprint(server: ServerProcess, prefix_glob: str) -> dict:
    rss_kib, fds = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != server.process.pid:
                continue
            status = (entry / "status").read_text()
            rss_kib += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            fds += len(os.listdir(entry / "fd"))
        except (OSError, StopIteration, ValueError):
            continue
    segments = len(list(Path("/dev/shm").glob(prefix_glob)))
    return {"rss_mb": round(rss_kib / 1024, 1), "fds": fds, "shm_segments": segments}


def chaos(server: ServerProcess, archives: dict, stop: threading.Event, every: float, events: list[dict]) -> None:
    rng = random.Random(7)
    actions = ["kill_worker", "flip_routing", "replace", "churn"]
    turn = 0
    while not stop.wait(every):
        action = actions[turn % len(actions)]
        turn += 1
        at = round(time.monotonic(), 2)
        if action == "kill_worker":
            pids = worker_pids(server)
            if pids:
                os.kill(rng.choice(pids), 9)
            events.append({"at": at, "action": action, "workers": len(pids)})
        elif action == "flip_routing":
            model = rng.choice(STEADY)
            policy = rng.choice(
                [
                    {"mode": "pinned", "variant": "original"},
                    {"mode": "split", "optimized_share": 0.5},
                    {"mode": "shadow", "serve": "original", "sample": 0.5},
                ]
            )
            status = requests.put(f"{server.url}/models/{model}/routing", json=policy, headers=AUTH, timeout=60).status_code
            events.append({"at": at, "action": action, "model": model, "mode": policy["mode"], "status": status})
        elif action == "replace":
            model = rng.choice(STEADY)
            archive, inputs = archives[model]
            status = upload(server.url, archive, inputs, name=model, config=FORCED_FREEZE, replace=True).status_code
            events.append({"at": at, "action": action, "model": model, "status": status})
        else:
            deleted = requests.delete(f"{server.url}/models/{CHURNED}", headers=AUTH, timeout=60).status_code
            archive, inputs = archives[CHURNED]
            status = upload(server.url, archive, inputs, name=CHURNED, config=FORCED_FREEZE).status_code
            events.append({"at": at, "action": action, "deleted": deleted, "status": status})


def server_counts(url: str) -> Counter:
    text = requests.get(url + "/metrics", timeout=30).text
    counts: Counter[tuple[str, str, int]] = Counter()
    for line in text.splitlines():
        if not line.startswith("optiserve_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels["endpoint"] in ("/predict", "/v2/models/{model}/infer"):
            # A worker's answer names the model; errors decided before a worker saw the request name none.
            counts[(labels["endpoint"], labels["status"])] += int(float(line.rpartition(" ")[2]))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--chaos-every", type=float, default=15.0, help="seconds between chaos actions")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = parser.parse_args()

    archives = {"steady-mlp": tiny_models.mlp(), "steady-cnn": tiny_models.cnn_bn(), CHURNED: tiny_models.mlp()}
    inputs = {name: batch[0][:2] for name, (_, batch) in archives.items()}
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "store", {"OPTISERVE_MAX_UPLOAD_BYTES": str(64 * 2**20)}).start()
        try:
            for name, (archive, batch) in archives.items():
                accepted = upload(server.url, archive, batch, name=name, config=FORCED_FREEZE)
                assert accepted.status_code == 202, accepted.text
                wait_for(server.url, accepted.json()["id"])
            from server.inference.shared_tensors import prefix_for

            names = {name: requests.get(f"{server.url}/v2/models/{name}", timeout=30).json()["inputs"][0]["name"] for name in archives}
            shm_glob = prefix_for(Path(folder) / "store") + "*"
            tally, stop, events, footprints = Tally(), threading.Event(), [], []
            before = server_counts(server.url)
            threads = [threading.Thread(target=client_loop, args=(server.url, stop, tally, inputs, names, seed)) for seed in range(args.clients)]
            threads.append(threading.Thread(target=chaos, args=(server, archives, stop, args.chaos_every, events)))
            started = time.monotonic()
            for thread in threads:
                thread.start()
            while (elapsed := time.monotonic() - started) < args.seconds:
                footprints.append({"at": round(elapsed, 1), **group_footprint(server, shm_glob)})
                time.sleep(min(5.0, args.seconds - elapsed))
            stop.set()
            for thread in threads:
                thread.join(180)
            after = server_counts(server.url)
            healthy = requests.get(server.url + "/health", timeout=30).status_code
        finally:
            leftovers = server.stop()
    return report(args, tally, events, footprints, before, after, healthy, leftovers)


def report(args, tally: Tally, events: list[dict], footprints: list[dict], before: Counter, after: Counter, healthy: int, leftovers: list[str]) -> int:
    client: Counter[tuple[str, str]] = Counter()
    for (endpoint, _, status), count in tally.by_status.items():
        client[(endpoint, str(status))] += count
    served = after - before
    total = sum(tally.by_status.values())
    ok = sum(count for (_, _, status), count in tally.by_status.items() if status == 200)
    kills = sum(1 for event in events if event["action"] == "kill_worker")
    unexplained = {
        f"{endpoint} {model} {status}": count
        for (endpoint, model, status), count in tally.by_status.items()
        if status != 200 and not (model == CHURNED and status in CHURN_STATUSES) and status not in KILL_STATUSES
    }
    killed_failures = sum(count for (_, model, status), count in tally.by_status.items() if status in KILL_STATUSES)
    quarter = max(1, len(footprints) // 4)
    first, last = footprints[:quarter], footprints[-quarter:]

    def median(rows: list[dict], key: str) -> float:
        return float(np.median([row[key] for row in rows]))

    growth = {key: (median(first, key), median(last, key)) for key in ("rss_mb", "fds", "shm_segments")}
    checks = {
        "every non-200 explained by churn or a kill": not unexplained,
        "no transport errors": not tally.errors,
        "server counts match the client's": {k: v for k, v in client.items()} == {k: v for k, v in served.items() if v},
        "RSS grew < 25% (first vs last quarter, medians)": growth["rss_mb"][1] < 1.25 * growth["rss_mb"][0],
        "file descriptors did not grow by > 10": growth["fds"][1] <= growth["fds"][0] + 10,
        "no shared-memory segments left growing": growth["shm_segments"][1] <= growth["shm_segments"][0] + 2,
        "server healthy at the end": healthy == 200,
        "nothing left after SIGTERM": not leftovers,
    }
    print(f"| requests | ok | failed during kills | unexplained | kills | chaos actions | seconds |")
    print(f"|---|---|---|---|---|---|---|")
    print(f"| {total} | {ok} | {killed_failures} | {sum(unexplained.values())} | {kills} | {len(events)} | {args.seconds:g} |")
    print()
    print("| resource | first quarter (median) | last quarter (median) |")
    print("|---|---|---|")
    for key, (start, end) in growth.items():
        print(f"| {key} | {start:g} | {end:g} |")
    print()
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    result = {
        "seconds": args.seconds,
        "clients": args.clients,
        "requests": total,
        "ok": ok,
        "failed_during_kills": killed_failures,
        "unexplained": unexplained,
        "transport_errors": dict(tally.errors),
        "client_counts": {f"{k[0]} {k[1]}": v for k, v in client.items()},
        "server_counts": {f"{k[0]} {k[1]}": v for k, v in served.items() if v},
        "events": events,
        "footprints": footprints,
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
