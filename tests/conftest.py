"""Shared fixtures. Test models come from tiny_models.py; they are real TorchScript archives."""

from __future__ import annotations

import pytest

# Few timing rounds: tests check correctness, benchmarks (bench/) measure speed. Two warm-up calls
# let TorchScript's profiling executor finish optimizing before anything is timed.
FAST = {"latency": {"warmup": 2, "rounds": 3}}


@pytest.fixture
def fast_config() -> dict:
    return {key: dict(value) for key, value in FAST.items()}
