"""How much a fidelity figure measured on n held-out samples can say.

Agreement and accuracy are counts out of n, so they move in steps of 1/n and carry the sampling
error of a proportion. The Wilson interval is used because it stays sensible at 0 or n successes,
exactly where a good candidate lands (12 of 12 agree says far less than 1000 of 1000).
"""

from __future__ import annotations

import math

Z_95 = 1.959964  # two-sided 95% normal quantile

# Metrics that are a share of samples, and so come in steps of one sample.
COUNTED_METRICS = ("agreement", "accuracy_drop")


def wilson_lower_bound(proportion: float, samples: int, z: float = Z_95) -> float:
    """Lower end of the Wilson score interval for a proportion observed over `samples` trials."""
    return wilson_interval(proportion, samples, z)[0]


def wilson_interval(proportion: float, samples: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion observed over `samples` trials ((0, 1) with none)."""
    if samples <= 0:
        return 0.0, 1.0
    centre = proportion + z * z / (2 * samples)
    spread = z * math.sqrt(proportion * (1 - proportion) / samples + z * z / (4 * samples * samples))
    scale = 1 + z * z / samples
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def samples_to_show(threshold: float, z: float = Z_95) -> int | None:
    """Fewest samples whose lower bound can reach `threshold` when every sample agrees (n / (n + z²) ≥ t)."""
    if not 0 < threshold < 1:
        return None
    return math.ceil(threshold * z * z / (1 - threshold))


def resolution_warning(metric: str, threshold: float, samples: int) -> str | None:
    """Why this many held-out samples cannot show a tolerance (metric, threshold), or None when they can."""
    if metric not in COUNTED_METRICS or samples <= 0:
        return None
    step = 1 / samples
    if metric == "agreement":
        needed = samples_to_show(threshold, Z_95_ONE_SIDED)
        if needed is None or samples >= needed:
            return None
        one_miss = (
            f"one miss gives {1 - step:.4g} < {threshold:g}, so the tolerance passes only with no miss at all"
            if 1 - step < threshold
            else f"one sample moves agreement by {step:.4g}"
        )
        return (
            f"{samples} held-out samples cannot show agreement ≥ {threshold:g}: {one_miss}, and even "
            f"{samples} of {samples} only shows ≥ {agreement_bound(1.0, samples):.3f} at 95% confidence (one-sided); "
            f"that needs at least {needed} held-out samples with no miss"
        )
    if step > threshold:
        return (
            f"{samples} held-out samples: one sample moves accuracy by {step:.4g}, more than the allowed "
            f"drop of {threshold:g}, so the tolerance passes only with no sample lost"
        )
    return None


# Verdicts (met / undecided / missed) use one-sided 95% lower bounds: the claim certified is
# "at least the threshold", so the whole 5% goes to one side.
Z_95_ONE_SIDED = 1.644854


def agreement_bound(proportion: float, samples: int) -> float:
    """One-sided 95% Wilson lower bound on a proportion (agreement) observed over `samples`."""
    return wilson_interval(proportion, samples, Z_95_ONE_SIDED)[0]


def t_quantile_95(dof: int) -> float:
    """One-sided 95% Student t quantile; exact for 1 and 2 degrees of freedom, Cornish-Fisher beyond
    (within 0.3% from 3 on): the pipeline needs no scipy for it."""
    if dof <= 0:
        return math.inf
    if dof == 1:
        return 6.313752
    if dof == 2:
        return 2.919986
    z = Z_95_ONE_SIDED
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z
    ) / (384 * dof**3)


def mean_bound(mean: float, std: float | None, samples: int) -> float | None:
    """One-sided 95% lower bound on a mean (the mean cosine) from `samples` values with sample std
    `std`: mean − t(0.95, n−1)·std/√n. This assumes the mean of n cosines is roughly normal; cosines
    pile up just under 1 with a tail downwards, so at a few samples it is the optimistic side of the
    truth. None when it cannot be computed (one sample, or no std recorded)."""
    if std is None or samples < 2 or not math.isfinite(mean):
        return None
    return mean - t_quantile_95(samples - 1) * std / math.sqrt(samples)


def samples_for_agreement(proportion: float, threshold: float) -> int | None:
    """Fewest samples at which `proportion`, observed, has its one-sided bound at `threshold` or above;
    None when no number does (observed at or below the threshold)."""
    if proportion <= threshold or threshold >= 1:
        return None
    return _smallest(lambda n: agreement_bound(proportion, n) >= threshold)


def samples_for_mean(mean: float, std: float, threshold: float) -> int | None:
    """Fewest samples at which this mean and std have their one-sided t bound at `threshold` or above."""
    if mean <= threshold:
        return None
    if std <= 0:
        return 2
    return _smallest(lambda n: mean - t_quantile_95(n - 1) * std / math.sqrt(n) >= threshold)


def _smallest(enough, start: int = 2, limit: int = 10**9) -> int | None:
    """Smallest n ≥ start for which enough(n) holds, enough being monotone in n."""
    high = start
    while not enough(high):
        if high > limit:
            return None
        high *= 2
    low = max(start, high // 2)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if not enough(middle) else (low, middle)
    return high
