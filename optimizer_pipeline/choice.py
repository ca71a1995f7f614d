"""The rule the product lives by: serve a candidate only if it was measured to meet the tolerance
and to be faster by at least `min_speedup`. Otherwise serve the original, and say why."""

from __future__ import annotations

from .config import PipelineConfig
from .report import CandidateReport, Chosen


def choose(candidates: list[CandidateReport], config: PipelineConfig) -> Chosen:
    if config.force:
        forced = candidates[0]
        if forced.status == "ok":
            return _chosen(forced, "forced: the explicit plan is served as requested (`force: true`), "
                           + ("within" if forced.meets_tolerance else "OUTSIDE") + " the tolerance")
    qualified = [c for c in candidates if _qualifies(c, config)]
    if not qualified:
        return Chosen(candidate="original", reason=_why_none(candidates, config))
    # Fastest wins; a tie (within 1%) goes to the more faithful one.
    best_speed = max(c.speedup or 0.0 for c in qualified)
    contenders = [c for c in qualified if (c.speedup or 0.0) >= best_speed / 1.01]
    best = max(contenders, key=lambda c: (c.fidelity.sqnr_db if c.fidelity else 0.0, c.speedup or 0.0))
    others = len(qualified) - 1
    return _chosen(
        best,
        f"fastest candidate within the tolerance: {best.speedup:.2f}x at batch {config_batch(best)}"
        + (f", ahead of {others} other qualifying candidate(s)" if others else ""),
    )


def config_batch(candidate: CandidateReport) -> int:
    return candidate.latency[-1].batch_size if candidate.latency else 0


def _qualifies(candidate: CandidateReport, config: PipelineConfig) -> bool:
    return candidate.status == "ok" and candidate.meets_tolerance and (candidate.speedup or 0.0) >= config.min_speedup


def _chosen(candidate: CandidateReport, reason: str) -> Chosen:
    return Chosen(
        candidate=candidate.name,
        reason=reason,
        speedup=candidate.speedup,
        fidelity=candidate.fidelity,
        runtime=candidate.runtime,
    )


def _why_none(candidates: list[CandidateReport], config: PipelineConfig) -> str:
    reasons = []
    for candidate in candidates:
        if candidate.status == "failed":
            reasons.append(f"{candidate.name}: failed ({(candidate.error or '').splitlines()[0][:120]})")
        elif not candidate.meets_tolerance:
            missed = next((n for n in candidate.notes if n.startswith("tolerance missed")), "tolerance missed")
            reasons.append(f"{candidate.name}: {missed}")
        else:
            reasons.append(f"{candidate.name}: only {candidate.speedup:.2f}x (needs ≥ {config.min_speedup:.2f}x)")
    return "no candidate was both within the tolerance and faster; serving the original. " + "; ".join(reasons)
