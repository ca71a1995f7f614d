"""bench/peers.py's verdicts: per case, each pick against the best peer within budget, and how
optiserve's report said it judged each output."""

from __future__ import annotations

import time

from .peer_cases import Case

PICK_TARGET = 0.97  # the pick must reach this fraction of the best peer within budget (1.0 less 3% for timing noise)
UNLABELED_TARGET = 1.3  # given its unlabeled set, a conv case's pick must beat the best peer by this much
CLAIM_TOLERANCE = 0.15  # the report's speed-up must be within 15% of the one measured alone


def summarize(case: Case, runs: list[dict], rows: list[dict]) -> dict:
    peers = [row for row in rows[1:] if not row["variant"].startswith("optiserve pick")]
    within = [row for row in peers if row.get("alone_speedup") and row["within_budget"]]
    best = max(within, key=lambda row: row["alone_speedup"], default=None)
    report = runs[0]["result"].report
    return {
        "model": case.name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget": case.budget,
        "outputs": report.model.outputs,
        "judged": [j.model_dump() for j in report.outputs],
        "tolerance": report.tolerance,
        "best_peer": best["variant"] if best else None,
        "best_peer_speedup": best["alone_speedup"] if best else None,
        "picks": [_pick(run, rows, best) for run in runs],
        "rows": rows,
    }


def _pick(run: dict, rows: list[dict], best: dict | None) -> dict:
    report = run["result"].report
    chosen = report.chosen
    row = next((r for r in rows if r["variant"] == run["label"]), None)
    kept_original = row is None
    speedup = 1.0 if kept_original else row.get("alone_speedup")
    claimed = chosen.speedup or 1.0
    target = UNLABELED_TARGET if run["unlabeled"] else PICK_TARGET
    ratio = speedup / best["alone_speedup"] if best and speedup else None
    within = True if kept_original else row["within_budget"]
    search = report.search
    return {
        "label": run["label"],
        "unlabeled": run["unlabeled"],
        "candidate": chosen.candidate,
        "runtime": chosen.runtime,
        "reason": chosen.reason,
        "certified": chosen.certified,
        "optimize_seconds": round(run["seconds"], 1),
        "claimed_speedup": claimed,
        "alone_speedup": speedup,
        "claim_error": claimed / speedup - 1 if speedup else None,
        "claim_met": speedup is not None and abs(claimed / speedup - 1) <= CLAIM_TOLERANCE,
        "within_budget": within,
        "metrics": None if kept_original else row.get("metrics"),
        "target": target,
        "pick_over_best_peer": ratio,
        "target_met": within and (ratio is None or ratio >= target),
        "held_out_samples": report.calibration.held_out_samples,
        "unlabeled_summary": report.calibration.unlabeled.model_dump() if report.calibration.unlabeled else None,
        "pick_outputs": [_output(o) for o in chosen.fidelity.outputs] if chosen.fidelity else [],
        "compound_note": search.compound_note if search else None,
        "search_stopped": search.stopped_because if search else None,
        "trials_run": search.trials_run if search else None,
        "stage_seconds": report.stage_seconds,
    }


def _output(fidelity) -> dict:
    value = fidelity.agreement if fidelity.judged_by == "agreement" else fidelity.cosine_mean
    return {"name": fidelity.name, "judged_by": fidelity.judged_by, "value": value, "bound": fidelity.bound, "verdict": fidelity.verdict}


def judged_words(summary: dict) -> str:
    """'output_0: class_scores by agreement; output_1: regression by cosine' (the report's own words are in `judged`)."""
    return "; ".join(f"{j['name']}: {j['kind']} by {j['judged_by']}" for j in summary["judged"])


def print_case(summary: dict) -> None:
    print(f"\n{summary['model']}: budget {summary['budget']}")
    for judgement in summary["judged"]:
        print(f"  optiserve judged {judgement['name']} as {judgement['kind']} by {judgement['judged_by']}: {judgement['reason']}")
    print(f"{'variant':<58} {'runtime':<18} {'budget':>6} {'x alone':>8}  metrics")
    for row in summary["rows"]:
        if row["error"]:
            print(f"{row['variant'][:58]:<58} {row['runtime']:<18} failed: {row['error']}")
            continue
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.get("metrics", {}).items())
        print(f"{row['variant'][:58]:<58} {row['runtime']:<18} {'yes' if row['within_budget'] else 'NO':>6} {row.get('alone_speedup', 0):>8.2f}  {metrics}")
    for pick in summary["picks"]:
        ratio = pick["pick_over_best_peer"]
        print(f"{pick['label']}: {pick['candidate']} ({pick['runtime']}), claimed {pick['claimed_speedup']:.2f}x, alone "
              f"{pick['alone_speedup']:.2f}x ({pick['claim_error']:+.0%}); best peer {summary['best_peer']} "
              f"{summary['best_peer_speedup'] or 0:.2f}x; pick/peer {ratio or 0:.2f} (target {pick['target']}: "
              f"{'met' if pick['target_met'] else 'MISSED'}); optimize {pick['optimize_seconds']} s", flush=True)


def print_summary(results: list[dict]) -> None:
    print("\n| case | pick | what it is | best peer within budget | pick / best peer | claimed / alone | optimize | how each output was judged |")
    print("|---|---|---|---|---|---|---|---|")
    for summary in results:
        for pick in summary["picks"]:
            name = summary["model"] + (" + unlabeled" if pick["unlabeled"] else "")
            ratio = pick["pick_over_best_peer"]
            verdict = "met" if pick["target_met"] else "missed" if pick["within_budget"] else "missed: the pick is out of budget"
            print(f"| {name} | {pick['alone_speedup']:.2f}x | {pick['candidate']} ({pick['runtime']}) | "
                  f"{summary['best_peer'] or '-'} {summary['best_peer_speedup'] or 0:.2f}x | "
                  f"{ratio or 0:.2f} (≥ {pick['target']}: {verdict}) | {pick['claimed_speedup']:.2f}x / {pick['alone_speedup']:.2f}x "
                  f"({pick['claim_error']:+.0%}) | {pick['optimize_seconds']:.0f} s | {judged_words(summary)} |")


def print_markdown(results: list[dict]) -> None:
    """The summary table, then every case's variants: the bench's verdict and speed-up alone."""
    print_summary(results)
    print("\n| case | variant | runtime | within budget | x alone | bench's measure |\n|---|---|---|---|---|---|")
    for summary in results:
        for row in summary["rows"]:
            if row["error"]:
                print(f"| {summary['model']} | {row['variant']} | {row['runtime']} | failed: {row['error'][:80]} | | |")
                continue
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.get("metrics", {}).items() if k != "box_mae_px_original")
            print(f"| {summary['model']} | {row['variant']} | {row['runtime']} | {'yes' if row['within_budget'] else 'no'} | "
                  f"{row.get('alone_speedup', 0):.2f}x | {metrics} |")
