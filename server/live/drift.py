"""Drift statistics: a request's inputs against its model's calibration batch, for a group of requests at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wire.contract.live import InputMoments

# Drift statistics of a large input come from an even subsample of its values.
DRIFT_VALUES = 65536


@dataclass(frozen=True)
class CalibrationRange:
    low: float
    high: float
    mean: float
    std: float


def moments(ranges: list[CalibrationRange | None], requests: list[tuple[torch.Tensor, ...]]) -> list[list[InputMoments]]:
    """Per request, its inputs' statistics against the calibration batch."""
    per_request: list[list[InputMoments]] = [[] for _ in requests]
    for position, known in enumerate(ranges):
        if known is None:
            break  # inputs after one without a range keep no statistics either (positions must line up)
        tensors = [inputs[position].detach().reshape(-1) for inputs in requests]
        if len({t.numel() for t in tensors}) == 1:
            rows = [torch.stack(tensors)]  # the usual group: one request's shape, so one set of operations
        else:
            rows = [t.unsqueeze(0) for t in tensors]
        found = [entry for values in rows for entry in _row_moments(values, known)]
        for drift, entry in zip(per_request, found):
            drift.append(entry)
    return per_request


def _row_moments(rows: torch.Tensor, known: CalibrationRange) -> list[InputMoments]:
    """The moments of each row of `rows` (one request's values per row), from an even subsample of a long row."""
    if rows.shape[1] > DRIFT_VALUES:
        rows = rows[:, :: rows.shape[1] // DRIFT_VALUES]
    rows = rows.double()
    z = (rows - known.mean) / known.std
    outside = ((rows < known.low) | (rows > known.high)).sum(dim=1).tolist()
    z_sums, z_square_sums = z.sum(dim=1).tolist(), (z * z).sum(dim=1).tolist()
    count = rows.shape[1]
    return [InputMoments(values=count, outside=o, z_sum=zs, z_square_sum=zq) for o, zs, zq in zip(outside, z_sums, z_square_sums)]
