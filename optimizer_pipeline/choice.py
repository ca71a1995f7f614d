"""The rule the product lives by: serve a candidate only if it was measured to meet the tolerance
and to be faster by at least `min_speedup`. Otherwise serve the original, and say why."""

from __future__ import annotations

from collections.abc import Iterable

from wire.contract.report import CandidateReport, Chosen

from .config import PipelineConfig


TIE_MARGIN = 1.03
MISSED = "tolerance missed:"  # how a candidate's note on a missed tolerance begins (fidelity.measures)


def choose(candidates: list[CandidateReport], config: PipelineConfig, objective: str = "latency") -> Chosen:
    if config.force:
        forced = candidates[0]
        if forced.status == "ok":
            return _chosen(forced, "forced: the explicit plan is served as requested (`force: true`), "
                           + ("within" if forced.meets_tolerance else "OUTSIDE") + " the tolerance")
    qualified = [c for c in candidates if _qualifies(c, config)]
    if objective == "latency" and any(c.timed_alone for c in candidates):
        # Speed is ranked among the finalists, timed alone: the in-process figures of the others are
        # not comparable with theirs (latency_alone.py), and a finalist's may be far lower.
        qualified = [c for c in qualified if c.timed_alone]
    if not qualified:
        return Chosen(candidate="original", reason=_why_none(candidates, config))
    # A candidate whose bound clears the tolerance beats any that was only observed within it: the
    # served variant's fidelity must be shown, not hoped for. Only when none is certified (too few
    # held-out samples to certify anything) is the best observed one served, and the reason says so.
    certified = [c for c in qualified if c.certified]
    uncertain = "" if certified else _uncertain_note(qualified)
    qualified = certified or qualified
    others = len(qualified) - 1
    ahead = f", ahead of {others} other qualifying candidate(s)" if others else ""
    if objective == "size":
        best = min(qualified, key=lambda c: (c.size_bytes or 0, -(c.speedup or 0.0)))
        return _chosen(best, f"smallest candidate within the tolerance and faster: {best.size_bytes} bytes, "
                       f"{best.speedup:.2f}x at batch {config_batch(best)}{ahead}{uncertain}")
    # Fastest wins; a near tie goes to the more faithful one: a few percent is within timing noise here.
    best_speed = max(c.speedup or 0.0 for c in qualified)
    contenders = [c for c in qualified if (c.speedup or 0.0) >= best_speed / TIE_MARGIN]
    best = max(contenders, key=lambda c: (_sqnr(c), c.speedup or 0.0))
    fastest = max(qualified, key=lambda c: c.speedup or 0.0)
    passed_over = _passed_over(candidates, best)
    # "Fastest within the tolerance" would not be true where a faster one was within it, uncertified.
    kind = "certified candidate" if _faster_uncertified(candidates, best) is not None else "candidate"
    if best is fastest:
        return _chosen(best, f"fastest {kind} within the tolerance: {best.speedup:.2f}x at batch {config_batch(best)}{ahead}{uncertain}{passed_over}")
    return _chosen(best, (
        f"within {TIE_MARGIN - 1:.0%} of the fastest {kind} within the tolerance ({fastest.name}, {fastest.speedup:.2f}x), "
        f"a tie at this timing noise, and more faithful: SQNR {_sqnr(best):.1f} dB against {_sqnr(fastest):.1f} dB; "
        f"{best.speedup:.2f}x at batch {config_batch(best)}{ahead}{uncertain}{passed_over}"
    ))


def _uncertain_note(qualified: list[CandidateReport]) -> str:
    if any(c.certified is None for c in qualified):
        return ""  # built before verdicts existed
    needed = [c.fidelity.more_samples for c in qualified if c.fidelity and c.fidelity.more_samples is not None]
    more = f"; about {min(needed)} more held-out (unlabeled) samples would settle the closest" if needed else ""
    return f" — NOT certified: the held-out samples are too few to show any candidate within the tolerance at 95%{more}"


def _passed_over(candidates: list[CandidateReport], best: CandidateReport) -> str:
    """What the choice left behind that ran faster in process (see _faster_uncertified, _faster_missed).
    Their figures are in process (only finalists are timed alone), so the pick's is given beside them."""
    parts = []
    uncertified = _faster_uncertified(candidates, best)
    if uncertified is not None and uncertified.fidelity is not None:
        more = uncertified.fidelity.more_samples
        settle = f"about {more} more held-out (unlabeled) samples at the same figures would settle it" if more else "more held-out samples would settle it"
        parts.append(f"{uncertified.name} {_in_process(uncertified):.2f}x, within the tolerance on {uncertified.fidelity.samples} "
                     f"held-out samples but not certified at 95% ({settle})")
    missed = _faster_missed(candidates, best)
    if missed is not None:
        note = next((n.removeprefix(MISSED).strip() for n in missed.notes if n.startswith(MISSED)), None)
        parts.append(f"{missed.name} {_in_process(missed):.2f}x, outside the tolerance" + (f" ({note})" if note else ""))
    return f"; faster in process than this one's {_in_process(best):.2f}x there: " + "; ".join(parts) if parts else ""


def _faster_uncertified(candidates: list[CandidateReport], best: CandidateReport) -> CandidateReport | None:
    """For a certified pick: the fastest candidate observed within the tolerance, but not certified."""
    if not best.certified:
        return None
    return _fastest(c for c in _faster(candidates, best) if c.meets_tolerance and c.certified is False)


def _faster_missed(candidates: list[CandidateReport], best: CandidateReport) -> CandidateReport | None:
    return _fastest(c for c in _faster(candidates, best) if not c.meets_tolerance)


def _faster(candidates: list[CandidateReport], best: CandidateReport) -> list[CandidateReport]:
    return [c for c in candidates if c.status == "ok" and c is not best and _in_process(c) > _in_process(best) * TIE_MARGIN]


def _fastest(candidates: Iterable[CandidateReport]) -> CandidateReport | None:
    return max(candidates, key=_in_process, default=None)


def _in_process(candidate: CandidateReport) -> float:
    alone = candidate.timed_alone
    return (alone.in_process_speedup if alone is not None and alone.in_process_speedup else candidate.speedup) or 0.0


def _sqnr(candidate: CandidateReport) -> float:
    return candidate.fidelity.sqnr_db if candidate.fidelity else 0.0


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
        certified=candidate.certified,
    )


def _why_none(candidates: list[CandidateReport], config: PipelineConfig) -> str:
    tried = [c for c in candidates if c.status != "skipped"]
    prefix = "no candidate was both within the tolerance and faster; serving the original. "
    if len(tried) > 6:
        return prefix + _count_reasons(tried, config)
    reasons = []
    for candidate in tried:
        if candidate.status == "failed":
            reasons.append(f"{candidate.name}: failed ({(candidate.error or '').splitlines()[0][:120]})")
        elif not candidate.meets_tolerance:
            missed = next((n for n in candidate.notes if n.startswith(MISSED)), "tolerance missed")
            reasons.append(f"{candidate.name}: {missed}")
        else:
            reasons.append(f"{candidate.name}: only {candidate.speedup:.2f}x (needs ≥ {config.min_speedup:.2f}x)")
    return prefix + "; ".join(reasons)


def _count_reasons(tried: list[CandidateReport], config: PipelineConfig) -> str:
    failed = sum(c.status == "failed" for c in tried)
    missed = [c for c in tried if c.status == "ok" and not c.meets_tolerance]
    slow = [c for c in tried if c.status == "ok" and c.meets_tolerance]
    parts = [f"{len(tried)} trials: {failed} failed, {len(missed)} missed the tolerance, {len(slow)} were within it but too slow"]
    if slow:
        best = max(slow, key=lambda c: c.speedup or 0.0)
        parts.append(f"fastest within the tolerance: {best.name} at {best.speedup:.2f}x (needs ≥ {config.min_speedup:.2f}x)")
    if missed:
        fastest = max(missed, key=lambda c: c.speedup or 0.0)
        why = next((n for n in fastest.notes if n.startswith(MISSED)), "tolerance missed")
        parts.append(f"fastest overall: {fastest.name} at {(fastest.speedup or 0):.2f}x, but {why}")
    return "; ".join(parts)
