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


class Loops(nn.Module):
    """Never returns, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 0.0
        return x


class LoopsOncePruned(nn.Module):
    """Runs as uploaded, and never returns once any weight of its first layer is zero: its pruned
    candidates hang, the original and its other candidates do not."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 64)
        self.rest = nn.Sequential(nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rest(self.first(x))
        while bool((self.first.weight == 0.0).any()):
            y = y + 0.0
        return y


def archive(model: nn.Module) -> bytes:
    return _script(model)


def inputs(batch: int = 8) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 16),)
