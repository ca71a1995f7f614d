"""Tiny real TorchScript models for tests, built in well under a second each.

Each builder returns (archive_bytes, calibration_inputs): the inputs are a tuple of tensors whose
first dimension is the batch. Weights are seeded, so every run builds the same models.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def _archive(module: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, buffer)
    return buffer.getvalue()


def _trace(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _archive(torch.jit.trace(model.eval(), inputs, strict=False))


def _script(model: nn.Module) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _archive(torch.jit.script(model.eval()))


class MLP(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        )
        self.downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.branch(x) + self.downsample(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 1), nn.ReLU(),
        )
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).mean((2, 3)))


class LSTMTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TwoInputs(nn.Module):
    """Two positional inputs, a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.meta = nn.Linear(4, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.image(image).mean((2, 3))
        embedding = torch.cat([pooled, torch.relu(self.meta(meta))], dim=1)
        return self.head(embedding), embedding


class Gated(nn.Module):
    """Scripted control flow: the branch depends on the data."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 6)
        self.b = nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 0):
            return self.a(x)
        return self.b(x)


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(10, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.body(x))
        return {"logits": hidden[:, :4], "embedding": hidden}


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls()


def mlp(batch: int = 64) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(MLP), inputs), inputs


def cnn_bn(batch: int = 48) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(ConvBN), inputs), inputs


def residual(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(Residual), inputs), inputs


def depthwise(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(Depthwise), inputs), inputs


def lstm(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 7, 8, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(LSTMTagger), inputs), inputs


def two_inputs(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(batch, 1, 8, 8, generator=generator), torch.randn(batch, 4, generator=generator))
    return _trace(_seeded(TwoInputs), inputs), inputs


def gated_scripted(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 12, generator=torch.Generator().manual_seed(1)),)
    return _script(_seeded(Gated)), inputs


def dict_output(batch: int = 32) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 10, generator=torch.Generator().manual_seed(1)),)
    return _script(_seeded(DictOutput)), inputs


ALL = {
    "mlp": mlp,
    "cnn_bn": cnn_bn,
    "residual": residual,
    "depthwise": depthwise,
    "lstm": lstm,
    "two_inputs": two_inputs,
    "gated_scripted": gated_scripted,
    "dict_output": dict_output,
}


def local_forward(archive: bytes, *inputs: torch.Tensor) -> torch.Tensor:
    """What an archive answers when called directly: the reference for what a server returns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(archive))
    with torch.inference_mode():
        return module(*inputs)


def calibration_bytes(inputs: tuple[torch.Tensor, ...]) -> bytes:
    """A calibration file as a user writes it: torch.save of a Tensor, or of a tuple for several inputs."""
    buffer = io.BytesIO()
    torch.save(inputs[0] if len(inputs) == 1 else inputs, buffer)
    return buffer.getvalue()
