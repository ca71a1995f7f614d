"""The vetted op set: hostile models are refused before any of their code runs, and every model we
test or benchmark on, plus every variant our passes make of them, passes."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

import tiny_models
import topologies
from optimizer_pipeline import UnsafeModelError, inspect_upload, jit, optimize
from optimizer_pipeline.calibration import Batch
from optimizer_pipeline.model_loading import run_model
from optimizer_pipeline.model_ops import check_model_ops, is_vetted
from optimizer_pipeline.passes import parse_pass_spec, run_pass

CALIBRATION = tiny_models.calibration_bytes((torch.randn(4, 4),))


def _archive(module: nn.Module) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_models._archive(torch.jit.script(module.eval()))


@torch.jit.script
def read_secret(count: int) -> torch.Tensor:
    return torch.from_file("/etc/passwd", False, count, dtype=torch.uint8)


class ReadsFile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file("/etc/passwd", False, 4, dtype=torch.uint8).float()


class WritesFile(nn.Module):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.path, True, 4, dtype=torch.uint8).copy_(torch.tensor([104, 105, 33, 10]))
        return x + written.float()


class Prints(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("injected log line")
        return x


class Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    @torch.jit.export
    def leak(self) -> torch.Tensor:
        return torch.from_file("/etc/passwd", False, 4, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class HasLeakySubmodule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), Leaky())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class ReadsInBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            x = x + torch.from_file("/etc/passwd", False, 4, dtype=torch.uint8).float()
        return x


class ReadsInLoop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(x.shape[0]):
            x = x + torch.from_file("/etc/passwd", False, 4, dtype=torch.uint8).float()
        return x


class CallsReader(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + read_secret(4).float()


class WritesOnLoad(nn.Module):
    """torch.jit.load runs a scripted __setstate__: code that runs before any graph can be walked."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)
        self.weight = torch.zeros(4)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.path, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[2]
        written = torch.from_file(self.path, True, 4, dtype=torch.uint8).copy_(torch.tensor([104, 105, 33, 10]))
        self.weight = state[1] + written.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


@pytest.mark.parametrize(
    "probe, op, location",
    [
        (ReadsFile(), "aten::from_file", "`forward`"),
        (Prints(), "prim::Print", "`forward`"),
        (HasLeakySubmodule(), "aten::from_file", "`encoder.1.leak`"),
        (ReadsInBranch(), "aten::from_file", "`forward`"),
        (ReadsInLoop(), "aten::from_file", "`forward`"),
        (CallsReader(), "aten::from_file", "`forward`, inside a function or method it calls (test_model_ops.read_secret)"),
    ],
    ids=["reads_file", "prints", "submodule_method", "if_branch", "loop", "called_function"],
)
def test_a_model_with_an_unvetted_op_is_refused_naming_the_op_and_where_it_sits(probe, op, location, capfd):
    with pytest.raises(UnsafeModelError) as refused:
        inspect_upload(_archive(probe), CALIBRATION)
    assert f"{op} in {location}" in str(refused.value)
    assert refused.value.http_status == 422
    assert "injected log line" not in capfd.readouterr().out


def test_the_write_probe_writes_when_run_but_is_refused_before_it_runs(tmp_path):
    proof = tmp_path / "proof"
    torch.jit.script(WritesFile(proof))(torch.zeros(4))
    assert proof.read_bytes() == b"hi!\n"  # the probe is real

    target = tmp_path / "target"
    archive = _archive(WritesFile(target))
    with pytest.raises(UnsafeModelError, match=r"aten::from_file in `forward`"):
        inspect_upload(archive, CALIBRATION)
    with pytest.raises(UnsafeModelError, match=r"aten::from_file in `forward`"):
        optimize(archive, CALIBRATION)  # the CLI's path
    assert not target.exists()


def test_an_archive_whose_setstate_would_run_on_load_is_refused_before_loading(tmp_path):
    proof = tmp_path / "proof"
    proof_archive = _archive(WritesOnLoad(proof))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(io.BytesIO(proof_archive))
    assert proof.read_bytes() == b"hi!\n"  # loading alone ran the probe's code

    target = tmp_path / "target"
    with pytest.raises(UnsafeModelError, match="__setstate__"):
        inspect_upload(_archive(WritesOnLoad(target)), CALIBRATION)
    assert not target.exists()


@pytest.mark.parametrize(
    "kind, vetted",
    [
        ("aten::linear", True),
        ("aten::warn", True),
        ("prim::If", True),
        ("quantized::linear", True),
        ("aten::quantize_per_tensor", True),
        ("aten::from_file", False),
        ("aten::save", False),
        ("aten::_load_anything", False),
        ("prim::Print", False),
        ("prim::PythonOp", False),
        ("prim::CallFunction", False),
        ("foo::bar", False),
    ],
)
def test_the_vetted_set(kind: str, vetted: bool):
    assert is_vetted(kind) is vetted


def _bench_models():
    """bench/models.py by path: bench/ is scripts, not a package. Its models need nothing but torch."""
    spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).parent.parent / "bench" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _every_model_we_use() -> dict[str, jit.ScriptModule]:
    models = {f"tiny:{name}": jit.load_archive(build()[0]) for name, build in tiny_models.ALL.items()}
    for name in topologies.TOPOLOGIES:
        models[f"topology:{name}"] = jit.load_archive(tiny_models._trace(*topologies.build(name, batch=4)))
    bench = _bench_models()
    digits, fashion = (torch.randn(4, 1, 8, 8),), (torch.randn(4, 1, 28, 28),)
    for factory, inputs in [
        (bench.CnnBN, digits), (bench.MLP, digits), (bench.RowLSTM, digits),
        (bench.ResNetSmall, fashion), (bench.DenseBlockNet, fashion), (bench.DepthwiseSeparable, fashion),
    ]:
        models[f"bench:{factory.__name__}"] = jit.load_archive(tiny_models._trace(factory(), inputs))
    return models


def test_every_model_in_tests_and_bench_passes():
    refused = {}
    for name, model in _every_model_we_use().items():
        try:
            check_model_ops(model)
        except UnsafeModelError as exc:
            refused[name] = str(exc)
    assert refused == {}


VARIANT_PASSES = [
    ("cnn_bn", {"pass": "freeze"}),
    ("cnn_bn", {"pass": "quantize_static"}),
    ("residual", {"pass": "quantize_static"}),
    ("lstm", {"pass": "quantize_dynamic"}),
    ("mlp", {"pass": "quantize_dynamic"}),
    ("cnn_bn", {"pass": "prune_structured", "amount": 0.5}),
    ("cnn_bn", {"pass": "prune_unstructured", "amount": 0.5}),
    ("mlp", {"pass": "quantize_qat", "epochs": 1}),
]


@pytest.mark.parametrize("model_name, spec", VARIANT_PASSES, ids=[f"{m}-{s['pass']}" for m, s in VARIANT_PASSES])
def test_the_variants_our_passes_make_pass(model_name: str, spec: dict):
    archive, inputs = tiny_models.ALL[model_name]()
    model = jit.load_archive(archive)
    batch = Batch(inputs, teacher_outputs=run_model(model, Batch(inputs)))  # QAT distils from the original
    output = run_pass(jit.reload(model), batch, parse_pass_spec(spec)).model
    check_model_ops(jit.reload(output))
