"""Benchmark: how far the sensitive-layer fallback takes TorchScript int8 on all-MiniLM-L6-v2.

Runs static int8 with its most sensitive Linears kept in float (per-module qconfig dicts on the
traced model) next to dynamic int8, judged on cosine to the original's embedding.

    python bench/minilm_fallback.py            # writes bench/results/minilm_fallback.json
    python bench/minilm_fallback.py --skip 2 4 8
"""

from __future__ import annotations

import argparse

from support.common import RESULTS_DIR, saved, write_results

from support import minilm
from optimizer_pipeline import optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, nargs="*", default=[4], help="values of quantize_static's skip_sensitive")
    parser.add_argument("--calibration-size", type=int, default=256)
    args = parser.parse_args()
    archive, tokenize = minilm.traced_minilm()
    calibration = tokenize(minilm.sentences(args.calibration_size))
    candidates = [{"name": "quantize_dynamic", "plan": [{"pass": "quantize_dynamic"}]}] + [
        {"name": f"quantize_static(skip_sensitive={n})", "plan": [{"pass": "quantize_static", "skip_sensitive": n}]} for n in args.skip
    ]
    config = {"candidates": candidates, "batch_size": 32, "tolerance": {"metric": "cosine", "threshold": 0.99}}
    report = optimize(archive, saved(calibration), config).report
    rows = []
    print("| candidate | speed-up @32 | cosine (held-out quarter) | layers kept in float | seconds |\n|---|---|---|---|---|")
    for candidate in report.candidates:
        details = candidate.details.get("0:quantize_static", {})
        row = {
            "candidate": candidate.name,
            "status": candidate.status,
            "error": candidate.error,
            "speedup_b32": candidate.speedup,
            "cosine": candidate.fidelity.cosine if candidate.fidelity else None,
            "float_layers": details.get("float_layers", []),
            "seconds": candidate.seconds,
        }
        rows.append(row)
        if candidate.status != "ok":
            print(f"| {candidate.name} | failed: {(candidate.error or '').splitlines()[0][:100]} | | | {candidate.seconds:.0f} |")
            continue
        print(f"| {candidate.name} | {candidate.speedup:.2f}x | {row['cosine']:.4f} | {', '.join(row['float_layers']) or '-'} | {candidate.seconds:.0f} |")
    write_results(RESULTS_DIR / "minilm_fallback.json", rows)


if __name__ == "__main__":
    main()
