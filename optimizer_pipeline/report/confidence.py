"""How much a fidelity figure measured on n held-out samples can say.

Agreement and accuracy are counts out of n, so they move in steps of 1/n and carry the sampling
error of a proportion. The Wilson interval is used because it stays sensible at 0 or n successes,
exactly where a good candidate lands (12 of 12 agree says far less than 1000 of 1000).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config judges fidelity with the bounds below, so it cannot be imported at run time
    from ..config import Tolerance

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


def resolution_warning(tolerance: Tolerance, samples: int) -> str | None:
    """Why this many held-out samples cannot show the tolerance, or None when they can."""
    if tolerance.metric not in COUNTED_METRICS or samples <= 0:
        return None
    step = 1 / samples
    if tolerance.metric == "agreement":
        needed = samples_to_show(tolerance.threshold)
        if needed is None or samples >= needed:
            return None
        one_miss = (
            f"one miss gives {1 - step:.4g} < {tolerance.threshold:g}, so the tolerance passes only with no miss at all"
            if 1 - step < tolerance.threshold
            else f"one sample moves agreement by {step:.4g}"
        )
        return (
            f"{samples} held-out samples cannot show agreement ≥ {tolerance.threshold:g}: {one_miss}, and even "
            f"{samples} of {samples} only shows ≥ {wilson_lower_bound(1.0, samples):.3f} at 95% confidence; "
            f"that needs at least {needed} held-out samples with no miss"
        )
    if step > tolerance.threshold:
        return (
            f"{samples} held-out samples: one sample moves accuracy by {step:.4g}, more than the allowed "
            f"drop of {tolerance.threshold:g}, so the tolerance passes only with no sample lost"
        )
    return None
