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


class OnetLike(nn.Module):
    """Like MTCNN's ONet: one trunk, three heads: a box regression [N, 4], landmarks [N, 10] (relative
    positions in [0, 1]) and face / no-face probabilities [N, 2], returned in ONet's order."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.PReLU(16), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.PReLU(32), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.PReLU(64),
        )
        self.box, self.landmarks, self.face = nn.Linear(64, 4), nn.Linear(64, 10), nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        # A trained face head is confident: here the inputs' brightness (onet_like makes it clearly
        # positive or negative) decides, as training would have made it.
        brightness = x.mean((1, 2, 3)).unsqueeze(1)
        return self.box(features), torch.sigmoid(self.landmarks(features)), torch.softmax(self.face(features) + 4 * torch.cat([brightness, -brightness], 1), dim=1)


class BoxRegressor(nn.Module):
    """A [N, 4] regression whose coordinates sit close together (offsets around 1), so that its argmax
    flips under tiny changes while the vector itself barely moves."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 + 0.05 * self.head(self.body(x))


class Embedder(nn.Module):
    """A sentence-embedding-like model: L2-normalised [N, 32] rows."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


class Probabilities(nn.Module):
    """A confident classifier that returns softmax probabilities [N, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(10 * self.net(x), dim=1)


class TokenClassifier(nn.Module):
    """Integer inputs (token ids): for the integer datatypes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


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


def onet_like(batch: int = 64) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(1)
    faces = torch.randint(0, 2, (batch, 1, 1, 1), generator=generator) * 2.0 - 1  # half bright, half dark
    inputs = (torch.randn(batch, 3, 24, 24, generator=generator) + faces,)
    return _trace(_seeded(OnetLike), inputs), inputs


def box_regressor(batch: int = 64) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(BoxRegressor), inputs), inputs


def probabilities(batch: int = 64) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(Probabilities), inputs), inputs


def embedder(batch: int = 64) -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = (torch.randn(batch, 16, generator=torch.Generator().manual_seed(1)),)
    return _trace(_seeded(Embedder), inputs), inputs


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
