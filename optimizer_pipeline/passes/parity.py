"""Is a converted model a faithful copy? Checked on every conversion (onnx_export, ov_convert) before use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..intake.calibration import Batch
from ..intake.model_loading import run_model

# Parity is checked at batch 1 and at the calibration size capped here: enough to catch a batch
# dimension baked into the graph, cheap enough to run on every conversion.
PARITY_BATCH_CAP = 16


def check_parity(
    reference: Callable[..., Any], converted: Callable[..., Any], calibration: Batch, tolerance: float, what: str
) -> dict[str, float]:
    """Worst relative error per batch size; raise when `converted` (e.g. "the ONNX export") is not a faithful copy."""
    errors = {}
    for size in sorted({1, min(len(calibration), PARITY_BATCH_CAP)}):
        batch = calibration.head(size)
        expected, got = run_model(reference, batch), run_model(converted, batch)
        if [name for name, _ in expected] != [name for name, _ in got]:
            raise ValueError(f"{what} names its outputs {[n for n, _ in got]}, the original {[n for n, _ in expected]}")
        error = max(_relative_error(want, have) for (_, want), (_, have) in zip(expected, got))
        if error > tolerance:
            raise ValueError(
                f"{what} differs from the original at batch {size}: max |error| is {error:.3g} "
                f"of the output scale (allowed {tolerance:g})"
            )
        errors[str(size)] = error
    return errors


def _relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    if reference.shape != candidate.shape:
        return float("inf")
    if reference.numel() == 0:
        return 0.0
    reference = reference.double()
    difference = (reference - candidate.double()).abs().max()
    return float(difference / reference.abs().max().clamp_min(1e-12))
