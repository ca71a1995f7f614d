"""Real torch.export programs (.pt2) for tests, exported in the test run, and hostile variants of them.

Each builder returns (pt2_bytes, eager_module, calibration_inputs). The batch dimension is dynamic
unless a builder says otherwise.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile

import torch
from torch import nn

import tiny_models


class TransformerBlock(nn.Module):
    """One encoder layer and a class head: attention reshapes by batch * heads."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class TwoInputs(nn.Module):
    """Two positional inputs, a tuple of two outputs (tiny_models.TwoInputs's shape; a submodule named
    `meta` does not survive torch.export.load in torch 2.13, so the names differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.side = nn.Linear(4, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, image: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.image(image).mean((2, 3))
        embedding = torch.cat([pooled, torch.relu(self.side(side))], dim=1)
        return self.head(embedding), embedding


def export_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: bool = True) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in inputs) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), inputs, dynamic_shapes=shapes)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    return buffer.getvalue()


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _inputs(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(*shape, generator=generator) for shape in shapes)


def cnn_bn(batch: int = 32):
    model, inputs = _seeded(tiny_models.ConvBN), _inputs((batch, 3, 16, 16))
    return export_bytes(model, inputs), model, inputs


def residual(batch: int = 32):
    model, inputs = _seeded(tiny_models.Residual), _inputs((batch, 3, 16, 16))
    return export_bytes(model, inputs), model, inputs


def two_inputs(batch: int = 32):
    model, inputs = _seeded(TwoInputs), _inputs((batch, 1, 8, 8), (batch, 4))
    return export_bytes(model, inputs), model, inputs


def transformer(batch: int = 32):
    model, inputs = _seeded(TransformerBlock), _inputs((batch, 10, 32))
    return export_bytes(model, inputs), model, inputs


class RowLSTM(nn.Module):
    """nn.LSTM with no state given: it makes its zero state from the batch size (aten.zeros of [1, batch, 16])."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def lstm(batch: int = 32):
    model, inputs = _seeded(RowLSTM), _inputs((batch, 6, 8))
    return export_bytes(model, inputs), model, inputs


ALL = {"cnn_bn": cnn_bn, "residual": residual, "two_inputs": two_inputs, "transformer": transformer}


# ---- hostile archives, each built from a real export ----


def rewritten(archive: bytes, edit) -> bytes:
    """The archive with `edit(name, data) -> data` applied to every member."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, edit(info.filename, source.read(info.filename)))
    return output.getvalue()


class _Touch:
    """Unpickling this creates `path`: proof that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def with_pickled_sample_inputs(archive: bytes, marker: str) -> bytes:
    payload = pickle.dumps(_Touch(marker))
    return rewritten(archive, lambda name, data: payload if "/sample_inputs/" in name else data)


def with_pickled_weights(archive: bytes) -> bytes:
    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("model_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    return rewritten(archive, edit)


def with_target(archive: bytes, target: str) -> bytes:
    """The first node's op replaced by `target` (e.g. torch.ops.aten.from_file.default, or torch.load)."""

    def edit(name: str, data: bytes) -> bytes:
        if "/models/" not in name or not name.endswith(".json"):
            return data
        program = json.loads(data)
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
        return json.dumps(program).encode()

    return rewritten(archive, edit)


def with_shape_expression(archive: bytes, expression: str) -> bytes:
    """Every symbolic size's expression replaced: torch parses them with sympify, an eval."""

    def edit(name: str, data: bytes) -> bytes:
        if "/models/" not in name or not name.endswith(".json"):
            return data
        return data.replace(b'"expr_str": "Symbol(', b'"expr_str": "' + expression.encode().replace(b'"', b'\\"') + b' or Symbol(')

    return rewritten(archive, edit)


_library = None


def with_custom_op(batch: int = 8):
    """A program calling an op of the user's own library (optiserve_test::scale): unknown to the server."""
    global _library
    if _library is None:
        _library = torch.library.Library("optiserve_test", "DEF")
        _library.define("scale(Tensor x) -> Tensor")
        _library.impl("scale", lambda x: x * 2, "CompositeExplicitAutograd")

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.optiserve_test.scale(self.linear(x))

    model, inputs = _seeded(Scaled), _inputs((batch, 16))
    return export_bytes(model, inputs), model, inputs


def static_batch(batch: int = 8):
    model, inputs = _seeded(tiny_models.MLP), _inputs((batch, 16))
    return export_bytes(model, inputs, dynamic=False), model, inputs
