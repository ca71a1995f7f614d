"""The Pareto front of speed-up against fidelity: trials no other trial beats on both (the report's
`search.pareto`, and the front its readers mark)."""

from __future__ import annotations

from .report import CandidateReport
from .tolerance import Tolerance


def pareto_front(trials: list[CandidateReport], tolerance: Tolerance) -> list[str]:
    points = [(t.name, t.speedup, _fidelity_score(t, tolerance)) for t in trials if t.status == "ok" and t.speedup]
    points = [(name, speed, score) for name, speed, score in points if score is not None]
    front = []
    for name, speed, score in points:
        beaten = any(
            other_speed >= speed and other_score >= score and (other_speed > speed or other_score > score)
            for _, other_speed, other_score in points
        )
        if not beaten:
            front.append((speed, name))
    return [name for _, name in sorted(front, reverse=True)]


def _fidelity_score(trial: CandidateReport, tolerance: Tolerance) -> float | None:
    """The tolerance metric, oriented so that higher is better."""
    value = trial.fidelity_mean if trial.fidelity_mean is not None else (tolerance.value(trial.fidelity) if trial.fidelity else None)
    if value is None:
        return None
    return -value if tolerance.lower_is_better else value
