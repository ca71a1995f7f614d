"""Layer-wise reconstruction after structured pruning, and BatchNorm re-estimation on the pruned model."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from optimizer_pipeline import jit
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.passes.base import parse_pass_spec
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured

from topologies import trained


@pytest.fixture(scope="module")
def trained_conv_bn() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    """ConvBN trained once for this module (training is most of these tests' time), and 300 fresh samples."""
    return trained("conv_bn", batch=300)


def to_script(model, inputs, how="trace") -> jit.ScriptModule:
    with jit.quiet_torch():
        return jit.reload(torch.jit.trace(model, inputs) if how == "trace" else torch.jit.script(model))


def conv_bn_consumer_output(model, x: torch.Tensor) -> torch.Tensor:
    """conv2's output in ConvBN, computed from the module's parameters (the layer that reads conv1's channels)."""
    hidden = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)
    bn1 = model.bn1
    hidden = torch.relu(F.batch_norm(hidden, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, eps=1e-5))
    return F.conv2d(hidden, model.conv2.weight, model.conv2.bias, padding=1)


def flatten_linear_consumer_output(model, x: torch.Tensor) -> torch.Tensor:
    """fc1's output in FlattenLinear: it reads the conv's channels as blocks of 4x4 features."""
    features = F.adaptive_avg_pool2d(torch.relu(F.conv2d(x, model.conv.weight, model.conv.bias, padding=1)), 4)
    return F.linear(torch.flatten(features, 1), model.fc1.weight, model.fc1.bias)


@pytest.mark.parametrize(
    "name, protect, consumer_output",
    [("conv_bn", ("head",), conv_bn_consumer_output), ("flatten_linear", ("fc2",), flatten_linear_consumer_output)],
)
def test_reconstruction_lowers_the_consumers_output_error(name, protect, consumer_output, trained_conv_bn):
    model, inputs = trained_conv_bn if name == "conv_bn" else trained(name, batch=300)
    calibration, held_out = Batch(inputs).split(1 / 3, seed=0)
    original = to_script(model, inputs)
    with torch.no_grad():
        reference = consumer_output(original, held_out.inputs[0])

    def relative_error(reconstruct: bool) -> float:
        # `protect` keeps the consumer's outputs whole, so its output compares with the original's.
        config = PruneStructuredConfig(amount=0.5, protect=protect, reconstruct=reconstruct, recalibrate_batchnorm=False)
        result = prune_structured(jit.reload(original), calibration, config)
        assert ("reconstructed" in result.details) == reconstruct
        with torch.no_grad():
            output = consumer_output(result.model, held_out.inputs[0])
        return float((output - reference).pow(2).sum() / reference.pow(2).sum())

    pruned_only, reconstructed = relative_error(False), relative_error(True)
    assert reconstructed < 0.5 * pruned_only, (pruned_only, reconstructed)


def test_reconstruction_reports_each_refitted_layer(trained_conv_bn):
    model, (samples,) = trained_conv_bn
    inputs = (samples[:200],)
    details = prune_structured(to_script(model, inputs), Batch(inputs), PruneStructuredConfig(amount=0.5)).details
    refits = {refit["layer"]: refit for refit in details["reconstructed"]}
    assert sorted(refits) == ["conv2", "head"]  # the layers that read conv1's and conv2's channels
    assert all(refit["error_after"] < refit["error_before"] for refit in refits.values())
    assert refits["conv2"]["rows"] == 200 * 8 * 8  # one row per sample and output pixel


@pytest.mark.parametrize("how", ["trace", "script"])
def test_batchnorm_statistics_after_reconstruction_are_those_of_the_pruned_models_activations(how, trained_conv_bn):
    model, (samples,) = trained_conv_bn
    inputs = (samples[:64],)
    batch = Batch(inputs)
    pruned = prune_structured(to_script(model, inputs, how), batch, PruneStructuredConfig(amount=0.5)).model

    # The pruned (and refitted) model's activations, each BatchNorm normalizing by its batch statistics.
    x = inputs[0]
    with torch.no_grad():
        first = F.conv2d(x, pruned.conv1.weight, pruned.conv1.bias, padding=1)
        normalized = F.batch_norm(first, None, None, pruned.bn1.weight, pruned.bn1.bias, training=True, eps=1e-5)
        second = F.conv2d(torch.relu(normalized), pruned.conv2.weight, pruned.conv2.bias, padding=1)
    for norm, activation in ((pruned.bn1, first), (pruned.bn2, second)):
        torch.testing.assert_close(norm.running_mean, activation.mean((0, 2, 3)))
        torch.testing.assert_close(norm.running_var, activation.var((0, 2, 3)))


def test_stored_version_1_configs_run_without_reconstruction():
    assert PruneStructuredConfig().spec()["version"] == 2
    old = parse_pass_spec({"pass": "prune_structured", "amount": 0.3, "version": 1})
    assert old.reconstruct is False
    assert parse_pass_spec({"pass": "prune_structured", "version": 1, "reconstruct": True}).reconstruct is True
    with pytest.raises(ValueError):
        parse_pass_spec({"pass": "prune_structured", "version": 3})
