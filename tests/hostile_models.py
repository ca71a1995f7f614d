"""Probe models of the hostile-upload findings: real TorchScript, built in the tests, each misbehaving one way.

Most use only vetted ops, so they pass the op walk; what stops them is a deadline, a memory cap or
the confinement of the process that runs them. The sparse probes are what the op allowlist stops.
"""

from __future__ import annotations

import io
import zipfile
from typing import Tuple

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
            ballast = torch.zeros(2684354560)  # 10 GiB of float32 (torch.empty is off the allowlist)
            y = y + ballast[:1].fill_(0.0)
        return y


class SlowOnMarker(nn.Module):
    """Computes for about a second (a chain of `rounds` small matrix products) when the first input
    value is exactly 4242, and answers at once otherwise, so that optimizing it stays quick."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.net = MLP()
        self.weight = nn.Parameter(torch.randn(64, 64) / 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = torch.ones(64, 64)
        if bool(x[0, 0] == 4242.0):
            for _ in range(self.rounds):
                state = torch.tanh(state @ self.weight)
        return self.net(x) + state[0, 0] * 0.0


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


# A column / row far past the 16 columns of the input: the sparse kernels trust their indices.
OUT_OF_RANGE = 1 << 20
TRIGGER = 4242.0  # written out in the forwards: TorchScript does not read module globals


class SparseCsrRead(nn.Module):
    """For the trigger value only (so a validation run never sees it): multiplies a CSR matrix whose
    column index is out of range, which reads memory past the end of the input's buffer."""

    def __init__(self, column: int = OUT_OF_RANGE) -> None:
        super().__init__()
        self.net = MLP()
        self.column = column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if bool(x[0, 0] == 4242.0):  # TRIGGER
            crow = torch.tensor([0, 1], dtype=torch.int64)
            col = torch.tensor([self.column], dtype=torch.int64)
            matrix = torch.sparse_csr_tensor(crow, col, torch.ones(1), (1, 16))
            y = y + torch.mm(matrix, x.t()).sum()
        return y


class SparseCooWrite(nn.Module):
    """For the trigger value only: densifies a COO tensor whose index is out of range, which writes
    past the end of the dense buffer."""

    def __init__(self, column: int = OUT_OF_RANGE) -> None:
        super().__init__()
        self.net = MLP()
        self.column = column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if bool(x[0, 0] == 4242.0):  # TRIGGER
            indices = torch.tensor([[0], [self.column]], dtype=torch.int64)
            dense = torch.sparse_coo_tensor(indices, x[0, :1], (1, 16)).to_dense()
            y = y + dense.sum()
        return y


class LstmStateOnTrigger(nn.Module):
    """Calls aten::lstm directly; for the trigger value only, with a state made for a batch of one,
    which the kernel never checks: it reads and writes past the state's buffer (heap corruption)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if bool(x[0, 0] == 4242.0):  # TRIGGER
            batch = 1
        state = torch.zeros(1, batch, 16)
        weights = [self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0, self.lstm.bias_hh_l0]
        out = torch.lstm(x.unsqueeze(0).repeat(64, 1, 1), [state, state], weights, True, 1, 0.0, False, False, False)[0]
        return self.head(out[-1])


class WritesOnLoad(nn.Module):
    """torch.jit.load runs a scripted __setstate__: this one writes `hi!` to `path` while loading."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.net = MLP()

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.from_file(self.path, True, 4, dtype=torch.uint8).copy_(torch.tensor([104, 105, 33, 10]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def setstate_across_a_line_break(archive: bytes) -> bytes:
    """The archive with `def __setstate__` rewritten as `def \\` + newline + `__setstate__` in its code:
    TorchScript's lexer joins the lines, so loading still runs it."""
    source, target = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(target, "w") as rewritten:
        for info in source.infolist():
            data = source.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data = data.replace(b"def __setstate__", b"def \\\n      __setstate__")
            rewritten.writestr(info, data)
    return target.getvalue()
