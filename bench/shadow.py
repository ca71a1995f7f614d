"""Shadow traffic's cost on the serving path: p50 at concurrency 1 with `sample: 1.0` against none.

    python bench/shadow.py [--seconds 3] [--rounds 5]

One optiserve server (one worker, one torch thread) serves each bench model twice, from the same
file: "plain" pinned to its optimized variant, "shadowed" serving the same variant with every
request also run on the original by the worker's observer thread. The two take turns, round after
round; cells are medians over rounds. Target (issue 13): shadowed p50 within 10% of plain p50.
Writes bench/results/shadow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.serving import SERVER_ENV, models, poster, measure, upload_all  # noqa: E402
from optimizer_pipeline.files import atomic_write_text  # noqa: E402
from server_harness import AUTH, ServerProcess  # noqa: E402
from wire import encode_request  # noqa: E402
from wire.codec import wire_tensor  # noqa: E402

POLICIES = {
    "plain": {"mode": "pinned", "variant": "optimized"},
    "shadowed": {"mode": "shadow", "serve": "optimized", "sample": 1.0},
}
TARGET = 1.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns; cells are medians over rounds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "shadow.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    archives = {name: value for name, value in models().items() if name in ("small", "mid")}
    copies = {f"{name}-{policy}": archives[name] for name in archives for policy in POLICIES}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "store", SERVER_ENV).start()
        try:
            input_names = upload_all(server, copies)
            for name, policy in ((name, policy) for name in copies for policy in POLICIES if name.endswith(policy)):
                answer = requests.put(f"{server.url}/models/{name}/routing", json=POLICIES[policy], headers=AUTH, timeout=30)
                assert answer.status_code == 200, answer.text
            for model, (_, sample) in archives.items():
                one = sample[:1]
                calls = {}
                for policy in POLICIES:
                    name = f"{model}-{policy}"
                    body, headers = encode_request([wire_tensor(input_names[name], one.numpy())])
                    calls[policy] = poster(f"{server.url}/v2/models/{name}/infer", body, headers)
                p50 = {policy: [] for policy in POLICIES}
                for _ in range(args.rounds):
                    for policy, call in calls.items():
                        p50[policy].append(measure(call, 1, args.seconds)["p50_ms"])
                plain, shadowed = statistics.median(p50["plain"]), statistics.median(p50["shadowed"])
                compared = requests.get(f"{server.url}/models/{model}-shadowed", timeout=30).json()["live"]["fidelity"]["compared"]
                rows.append(
                    {
                        "model": model,
                        "plain_p50_ms": round(plain, 3),
                        "shadowed_p50_ms": round(shadowed, 3),
                        "ratio": round(shadowed / plain, 3),
                        "rounds_plain_ms": [round(v, 3) for v in p50["plain"]],
                        "rounds_shadowed_ms": [round(v, 3) for v in p50["shadowed"]],
                        "compared_in_window": compared,
                    }
                )
        finally:
            server.stop()
    print(f"{'model':8} {'plain p50 ms':>13} {'shadowed p50 ms':>16} {'ratio':>6}  target <= {TARGET}")
    for row in rows:
        verdict = "met" if row["ratio"] <= TARGET else "MISSED"
        print(f"{row['model']:8} {row['plain_p50_ms']:13.3f} {row['shadowed_p50_ms']:16.3f} {row['ratio']:6.3f}  {verdict}")
    results = {
        "server_env": {key: value for key, value in SERVER_ENV.items() if key != "OPTISERVE_API_KEY"},
        "seconds_per_cell": args.seconds,
        "rounds": args.rounds,
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "target": f"shadowed p50 <= {TARGET} x plain p50 at concurrency 1",
    }
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
