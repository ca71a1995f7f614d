"""TorchScript dynamic int8 on scripted control flow: a Linear fed an `if`'s result is kept in float
(torch's pass would otherwise fail with "Graph::copy() encountered a use of a value h.2 not in scope"),
and a model where that cannot help fails at once, with the reason, without touching other candidates."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from optimizer_pipeline import jit
from optimizer_pipeline.candidates import PlanBuilder, build_candidate
from optimizer_pipeline.config import PipelineConfig
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.fidelity.references import make_references
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.passes import Plan, parse_pass_spec, run_pass
from optimizer_pipeline.passes.quantization.control_flow import branch_fed_linears


class BranchThenHead(nn.Module):
    """The issue's shape: the branch taken depends on the input, and a Linear reads its result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            h1 = self.a(x)
        else:
            h1 = self.b(x)
        return self.head(h1)


class Nested(nn.Module):
    """The `if` inside a submodule whose result leaves it and feeds the next Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BranchThenHead()
        self.out = nn.Sequential(nn.Linear(4, 8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(x))


class FunctionalHead(nn.Module):
    """The `if`'s result goes through a functional linear in the top module's own forward: nothing to keep in float but everything."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(16, 32)
        self.weight = nn.Parameter(torch.randn(4, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            h1 = self.a(x)
        else:
            h1 = self.b(x)
        return nn.functional.linear(h1, self.weight)


def _scripted(module: nn.Module) -> jit.ScriptModule:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module.eval()), buffer)
    return jit.load_archive(buffer.getvalue())


def _inputs(features: int = 16) -> Batch:
    # Both signs of sum among the rows, so that held-out chunks take both branches.
    x = torch.randn(64, features, generator=torch.Generator().manual_seed(1))
    return Batch((x,))


def test_the_linear_fed_by_the_if_is_found_at_any_depth():
    assert branch_fed_linears(_scripted(BranchThenHead())).modules == ["head"]
    # out.0 takes inner's output, which is head's (a Linear's), not the if's: only inner.head.
    assert branch_fed_linears(_scripted(Nested())).modules == ["inner.head"]
    found = branch_fed_linears(_scripted(FunctionalHead()))
    assert found.modules == [] and "`if`" in found.impossible


def test_dynamic_int8_quantizes_the_branches_and_keeps_the_head_in_float():
    model, batch = _scripted(BranchThenHead()), _inputs()
    output = run_pass(jit.reload(model), batch, parse_pass_spec("quantize_dynamic"))
    quantized = jit.reload(output.model)
    assert output.details["float_layers"] == ["head"]
    graph = str(quantized.graph)  # frozen: one graph, the branches' blocks included
    assert graph.count("quantized::linear_dynamic") == 2 and graph.count("aten::linear") == 1
    for half in (batch.inputs[0].abs(), -batch.inputs[0].abs()):  # each branch
        fidelity = compare_outputs(run_model(model, Batch((half,))), run_model(quantized, Batch((half,))))
        assert fidelity.cosine > 0.99


def test_an_impossible_model_fails_early_with_the_reason_and_poisons_nothing():
    model, batch = _scripted(FunctionalHead()), _inputs()
    builder = PlanBuilder(make_references(model, batch, PipelineConfig(), threads=1)[0])
    failed = build_candidate(builder, "quantize_dynamic", Plan([parse_pass_spec("quantize_dynamic")]))
    assert failed.report.status == "failed" and failed.report.failed_pass == "quantize_dynamic"
    assert "cannot quantize this model" in failed.report.error and "not in scope" in failed.report.error
    assert "Graph::copy" not in failed.report.error.split("(torch bug")[0]  # our reason first, not torch's trace
    # The same builder, the same original: the next candidates build and are faithful.
    for spec in ("freeze", "onnx_export"):
        after = build_candidate(builder, spec, Plan([parse_pass_spec(spec)]))
        assert after.report.status == "ok" and after.report.meets_tolerance, after.report.error
