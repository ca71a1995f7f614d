"""Latency of a candidate against the original, measured in one process, taking turns.

These machines drift by up to 2.7x between runs (shared NOTES), so absolute numbers from separate
runs are meaningless. Alternating original and candidate call by call (ABBA order, so neither
always goes first) makes the drift hit both equally; the ratio of medians is what we trust.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from wire.contract.report import LatencyComparison, LatencyStats

Forward = Callable[[], object]


MIN_ROUNDS = 5


def compare_latency(
    original: Forward, candidate: Forward, batch_size: int, warmup: int, rounds: int, max_seconds: float | None = None
) -> LatencyComparison:
    """Time `rounds` calls of each, interleaved; zero-argument callables run one forward each.

    With `max_seconds`, slow models get fewer rounds (never under MIN_ROUNDS), estimated from the
    warm-up calls, so that a large model's search does not spend its budget on timing alone.
    """
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(warmup):
            original()
            candidate()
        if max_seconds is not None and warmup:
            per_round = (time.perf_counter() - started) / warmup
            rounds = max(min(rounds, MIN_ROUNDS), min(rounds, int(max_seconds / max(per_round, 1e-9))))
        original_times: list[float] = []
        candidate_times: list[float] = []
        for round_index in range(rounds):
            order = ((original, original_times), (candidate, candidate_times))
            for forward, times in order if round_index % 2 == 0 else reversed(order):
                start = time.perf_counter()
                forward()
                times.append((time.perf_counter() - start) * 1000)
    original_stats, candidate_stats = _stats(original_times), _stats(candidate_times)
    return LatencyComparison(
        batch_size=batch_size,
        original=original_stats,
        candidate=candidate_stats,
        speedup=original_stats.median_ms / max(candidate_stats.median_ms, 1e-9),
    )


def alone_stats(process_medians_ms: list[float], calls: int) -> LatencyStats:
    """Stats of a variant timed alone: the median and p90 of its per-process medians."""
    stats = _stats(process_medians_ms)
    return stats.model_copy(update={"runs": len(process_medians_ms) * calls})


def _stats(times_ms: list[float]) -> LatencyStats:
    ordered = sorted(times_ms)
    p90_index = min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))
    return LatencyStats(median_ms=statistics.median(ordered), p90_ms=ordered[p90_index], runs=len(ordered))
