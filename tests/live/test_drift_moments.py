"""A group's drift statistics, computed together, are each request's own (the worker computes them per group)."""

from __future__ import annotations

import pytest
import torch

from server.live.drift import DRIFT_VALUES, CalibrationRange, moments

KNOWN = CalibrationRange(low=-1.5, high=1.7, mean=0.1, std=0.9)


def alone(tensor: torch.Tensor, known: CalibrationRange) -> tuple[int, int, float, float]:
    """One request's statistics the plain way: every value (or an even subsample), in float64."""
    values = tensor.reshape(-1)
    if values.numel() > DRIFT_VALUES:
        values = values[:: values.numel() // DRIFT_VALUES]
    values = values.double()
    z = (values - known.mean) / known.std
    return values.numel(), int(((values < known.low) | (values > known.high)).sum()), float(z.sum()), float((z * z).sum())


@pytest.mark.parametrize("shapes", [[(1, 3, 8, 8)] * 5, [(1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)], [(1, 300_000)] * 3])
def test_a_groups_statistics_equal_each_requests_own(shapes):
    torch.manual_seed(0)
    requests = [(torch.randn(shape) * 2,) for shape in shapes]
    found = moments([KNOWN], requests)
    assert len(found) == len(requests)
    for (tensor,), (entry,) in zip(requests, found):
        count, outside, z_sum, z_square_sum = alone(tensor, KNOWN)
        assert (entry.values, entry.outside) == (count, outside)
        assert entry.z_sum == pytest.approx(z_sum, rel=1e-9, abs=1e-6)
        assert entry.z_square_sum == pytest.approx(z_square_sum, rel=1e-9)


def test_inputs_after_one_without_a_range_keep_no_statistics():
    requests = [(torch.ones(1, 4), torch.zeros(1, dtype=torch.bool), torch.ones(1, 2))] * 2
    found = moments([KNOWN, None, KNOWN], requests)
    assert [len(entries) for entries in found] == [1, 1]
    assert found[0][0].values == 4 and found[0][0].outside == 0
