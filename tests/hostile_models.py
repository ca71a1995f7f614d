"""Probe models of the hostile-upload findings: real TorchScript, built in the tests, each misbehaving one way.

Every one uses only vetted ops, so it passes the op walk; what stops it is a deadline, a memory
cap or the confinement of the process that runs it.
"""

from __future__ import annotations

import torch
from torch import nn

from tiny_models import MLP, _script


class LoopsAboveBatch(nn.Module):
    """Answers small batches (so it passes validation) and never returns for a batch larger than `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.net = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        while x.shape[0] > self.limit:
            y = y + 0.0
        return y


class LoopsOnMarker(nn.Module):
    """Never returns when the first input value is exactly 12345: a poisoned request, not a poisoned model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        while bool(x[0, 0] == 12345.0):
            y = y + 0.0
        return y


class AllocatesGiB(nn.Module):
    """Allocates 1 GiB on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ballast = torch.ones(268435456)  # 2**28 float32 = 1 GiB
        return self.net(x) + ballast[0] - 1.0


class AllocatesOnMarker(nn.Module):
    """Asks for 10 GiB when the first input value is exactly 777 (only address space: the pages are never touched)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if bool(x[0, 0] == 777.0):
            ballast = torch.empty(2684354560)  # 10 GiB of float32
            y = y + ballast[:1].fill_(0.0)
        return y


class Slow(nn.Module):
    """Takes a while on every call (a chain of small matrix products), whatever the input."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.net = MLP()
        self.weight = nn.Parameter(torch.randn(64, 64) / 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = torch.ones(64, 64)
        for _ in range(self.rounds):
            state = torch.tanh(state @ self.weight)
        return self.net(x) + state[0, 0] * 0.0


class Loops(nn.Module):
    """Never returns, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 0.0
        return x


def archive(model: nn.Module) -> bytes:
    return _script(model)


def inputs(batch: int = 8) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 16),)
