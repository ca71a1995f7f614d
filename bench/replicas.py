"""Scale-out benchmark: one API replica of a shared store against two behind a round-robin client,
and the cost of one model lookup on PostgreSQL against SQLite.

    python bench/replicas.py [--seconds 5] [--rounds 3]

- requests/s and p50 at concurrency 16 on the mid ResNet (`/predict`, JSON, 32 samples a request,
  the original variant), through one replica, and through two with the requests dealt round-robin.
  Every replica is alike: one inference worker with one torch thread, batches up to 16, no jobs
  (`--no-jobs`); the store is a real PostgreSQL and a real S3 API (moto_server) started here.
- the lookup every batch makes (`Store.get`, two queries), timed in a fresh process per backend
  and round: SQLite (WAL, local file) against PostgreSQL over TCP on 127.0.0.1.

The two configurations take turns, round after round; each cell is the median over rounds.
Prints the tables and writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.serving import SERVER_ENV, Call, json_tensor, measure, models  # noqa: E402
from real_services import Replica, running_postgres, running_s3  # noqa: E402
import tiny_models  # noqa: E402
from server_harness import AUTH  # noqa: E402

CONCURRENCY = 16
LOOKUPS = 3000


def round_robin(urls: list[str], body: bytes) -> Call:
    """Each call posts to the next replica in turn."""
    turn = itertools.cycle(urls)
    lock = threading.Lock()

    def call(session: requests.Session) -> None:
        with lock:
            url = next(turn)
        response = session.post(url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=120)
        assert response.status_code == 200, response.text[:300]

    return call


def upload(url: str, name: str, archive: bytes, calibration) -> None:
    files = {"model": ("model.pt", archive), "calibration": ("calibration.pt", tiny_models.calibration_bytes((calibration,)))}
    answer = requests.post(url + "/models", files=files, data={"name": name}, headers=AUTH, timeout=120)
    assert answer.status_code == 202, answer.text


def lookup_child(store: str, artifacts: str | None, ref: str) -> None:
    """In a fresh process: microseconds per Store.get, median of ten blocks after a warm-up."""
    from server.settings import Settings
    from server.store import open_store

    settings = Settings(store=store, artifacts=artifacts, api_key="bench", state_dir=Path(tempfile.mkdtemp()))
    found = open_store(settings)
    for _ in range(200):
        assert found.get(ref) is not None
    blocks = []
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(LOOKUPS // 10):
            found.get(ref)
        blocks.append((time.perf_counter() - started) / (LOOKUPS // 10))
    print(json.dumps({"us": 1e6 * statistics.median(blocks)}))


def time_lookup(store: str, artifacts: str | None, ref: str, env: dict[str, str]) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), "--lookup-child", store, artifacts or "", ref]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])["us"]


def embedded_store_with(name: str, archive: bytes, calibration, root: Path) -> str:
    """An embedded store holding the model, indexed as an upload would be (no server needed to read it)."""
    from wire.contract.models import ModelMeta
    from wire.contract.report import ModelSummary
    from server.settings import Settings
    from server.store import new_model_id, now, open_store

    store = open_store(Settings(store=str(root)))
    model_id = new_model_id()
    store.stage_files(model_id, {"original.pt": archive, "calibration.bin": tiny_models.calibration_bytes((calibration,))})
    summary = ModelSummary(inputs=["x"], input_shapes=[[32, 3, 32, 32]], input_dtypes=["float32"], outputs=["y"], output_shapes=[[32, 10]],
                           parameters=0, size_bytes=len(archive), exported_methods=[])
    store.add_model(ModelMeta(id=model_id, name=name, created_at=now(), summary=summary))
    return str(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lookup-child", nargs=3, metavar=("STORE", "ARTIFACTS", "REF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lookup_child:
        store, artifacts, ref = args.lookup_child
        lookup_child(store, artifacts or None, ref)
        return 0

    archive, sample = models()["mid"]
    body = json.dumps({"model": "mid", "variant": "original", "inputs": [{**json_tensor(sample), "datatype": "FP32"}]}).encode()
    work = Path(tempfile.mkdtemp(prefix="optiserve-replicas-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        database = stack.enter_context(running_postgres())
        objects = stack.enter_context(running_s3(work / "moto.log"))
        dsn, bucket = database.new_database(), objects.new_bucket()
        shared = ["--store", dsn, "--artifacts", f"s3://{bucket}/bench"]
        env = {**os.environ, **SERVER_ENV, **objects.env}
        replicas = [Replica(work / f"api-{i}", shared, env).start() for i in range(2)]
        for replica in replicas:
            stack.callback(replica.stop)
        upload(replicas[0].url, "mid", archive, sample)
        configurations = {"1 replica": round_robin([replicas[0].url], body), "2 replicas, round-robin": round_robin([r.url for r in replicas], body)}
        sqlite_store = embedded_store_with("mid", archive, sample, work / "embedded")
        lookups = {"SQLite (embedded)": (sqlite_store, None), "PostgreSQL (shared)": (dsn, f"s3://{bucket}/bench")}

        serving: dict[str, list[dict]] = {name: [] for name in configurations}
        lookup_us: dict[str, list[float]] = {name: [] for name in lookups}
        for round_number in range(args.rounds):
            for name, call in configurations.items():
                serving[name].append(measure(call, CONCURRENCY, args.seconds))
                print(f"round {round_number + 1}: {name}: {serving[name][-1]['rps']:.1f} requests/s", flush=True)
            for name, (store, artifacts) in lookups.items():
                lookup_us[name].append(time_lookup(store, artifacts, "mid", env))

    rows = [
        {"configuration": name, "rps": statistics.median(r["rps"] for r in runs), "p50_ms": statistics.median(r["p50_ms"] for r in runs),
         "rps_runs": [round(r["rps"], 1) for r in runs]}
        for name, runs in serving.items()
    ]
    lookup_rows = [{"backend": name, "us_per_lookup": statistics.median(runs), "runs": [round(u, 1) for u in runs]} for name, runs in lookup_us.items()]
    print(f"\nmid ResNet, /predict JSON (32 samples a request), concurrency {CONCURRENCY}, {args.rounds} rounds of {args.seconds:g} s, medians")
    print(f"{'configuration':<26}{'requests/s':>12}{'p50 ms':>10}   runs")
    for row in rows:
        print(f"{row['configuration']:<26}{row['rps']:>12.1f}{row['p50_ms']:>10.1f}   {row['rps_runs']}")
    gain = rows[1]["rps"] / rows[0]["rps"]
    print(f"two replicas / one: {gain:.2f}x (on {os.cpu_count()} cores, shared with the client and the database)")
    print(f"\nStore.get (the lookup each batch makes), fresh process per run, medians of {args.rounds}")
    for row in lookup_rows:
        print(f"{row['backend']:<22}{row['us_per_lookup']:>8.0f} µs   {row['runs']}")
    extra = lookup_rows[1]["us_per_lookup"] - lookup_rows[0]["us_per_lookup"]
    print(f"PostgreSQL costs {extra:.0f} µs more per batch's lookup than SQLite")
    results = {"concurrency": CONCURRENCY, "seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(),
               "serving": rows, "two_over_one": gain, "lookups": lookup_rows}
    out = REPO / "bench" / "results" / "replicas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
