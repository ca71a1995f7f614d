"""Shared fixtures. Test models come from tiny_models.py; they are real TorchScript archives."""

from __future__ import annotations

import os

import pytest

from real_services import postgres, s3  # noqa: F401  (session fixtures: a real PostgreSQL and S3 API, started on first use)
from server_harness import API_KEY

# The servers the tests start use this key; the client and the CLI find it here, as a user's would.
os.environ["OPTISERVE_API_KEY"] = API_KEY

# Few timing rounds: tests check correctness, benchmarks (bench/) measure speed. Two warm-up calls
# let TorchScript's profiling executor finish optimizing before anything is timed.
FAST = {"latency": {"warmup": 2, "rounds": 3, "processes": 1}}


@pytest.fixture
def fast_config() -> dict:
    return {key: dict(value) for key, value in FAST.items()}
