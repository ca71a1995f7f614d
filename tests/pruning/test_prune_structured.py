"""Structured pruning on one tiny model per channel topology: shapes kept, channels gone, archives reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optimizer_pipeline import jit
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.channel_groups import recalibrate_batchnorm
from optimizer_pipeline.channel_groups.batchnorm import CHUNK
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.passes.base import parse_pass_spec
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured

from topologies import TOPOLOGIES, build, trained

SCRIPTABLE = ["mlp", "conv_bn", "residual_downsample", "depthwise_separable", "transformer_ffn", "two_inputs_tuple_output"]


def to_script(model: nn.Module, inputs: tuple[torch.Tensor, ...], how: str) -> jit.ScriptModule:
    with jit.quiet_torch():
        module = torch.jit.trace(model, inputs) if how == "trace" else torch.jit.script(model)
    return jit.reload(module)  # a loaded archive, as the pipeline hands it over


def prune(module: jit.ScriptModule, inputs, **options):
    return prune_structured(module, Batch(inputs), PruneStructuredConfig(**options))


@pytest.mark.parametrize(
    "name, how", [(name, "trace") for name in TOPOLOGIES] + [(name, "script") for name in SCRIPTABLE]
)
def test_every_topology_loses_channels_but_keeps_output_shapes(name, how):
    model, inputs = build(name)
    original = to_script(model, inputs, how)
    expected = [(n, t.shape) for n, t in run_model(original, Batch(inputs))]

    result = prune(jit.reload(original), inputs, amount=0.5)

    reloaded = jit.reload(result.model)
    assert [(n, t.shape) for n, t in run_model(reloaded, Batch(inputs))] == expected
    details = result.details
    assert details["parameters_after"] < details["parameters_before"]
    assert sum(p.numel() for p in reloaded.parameters()) == details["parameters_after"]
    assert details["pruned_groups"], details
    for group in details["pruned_groups"]:  # an attention head is `channels_per_unit` channels
        assert group["kept"] * group.get("channels_per_unit", 1) % 8 == 0 and group["kept"] < group["channels"]


def test_model_outputs_and_inputs_are_never_pruned():
    model, inputs = build("transformer_ffn")
    details = prune(to_script(model, inputs, "trace"), inputs).details
    # The residual stream is the model's input and output: only the FFN's hidden width may shrink.
    assert [g["modules"] for g in details["pruned_groups"]] == [["down", "up"]]
    skipped = {tuple(g["modules"]): g["reason"] for g in details["skipped_groups"]}
    assert "model input" in skipped[("down",)]


@pytest.mark.parametrize("name", ["attention_block", "fused_attention_block"])
@pytest.mark.parametrize("amount, heads, hidden", [(0.25, 3, 48), (0.5, 2, 32)])
def test_transformer_block_loses_the_requested_share_of_heads_and_ffn_units(name, amount, heads, hidden):
    model, inputs = build(name)
    original = to_script(model, inputs, "trace")

    result = prune(jit.reload(original), inputs, amount=amount)

    pruned = jit.reload(result.model)
    assert pruned(*inputs).shape == original(*inputs).shape
    for projection in ("query", "key", "value"):  # 4 heads of 8 channels
        assert getattr(pruned, projection).weight.shape == (heads * 8, 32)
    assert pruned.proj.weight.shape == (32, heads * 8)
    assert pruned.up.weight.shape == (hidden, 32) and pruned.down.weight.shape == (32, hidden)
    kept = {tuple(group["modules"]): group for group in result.details["pruned_groups"]}
    assert kept[("key", "proj", "query", "value")]["channels_per_unit"] == 8


def test_traced_view_constant_is_rewritten():
    model, inputs = build("shape_constant")
    traced = to_script(model, inputs, "trace")
    assert "256" in traced.code  # view(size(0), 16*4*4) was traced to a constant
    pruned = prune(traced, inputs).model
    assert "128" in pruned.code and "256" not in pruned.code
    assert pruned.fc.weight.shape == (5, 128)


def test_depthwise_groups_follow_the_channels():
    model, inputs = build("depthwise_separable")
    pruned = prune(to_script(model, inputs, "trace"), inputs).model
    depthwise = getattr(pruned.depthwise, "0")
    assert depthwise.weight.shape == (8, 1, 3, 3)
    assert getattr(pruned.stem, "0").weight.shape[0] == 8
    assert getattr(pruned.pointwise, "0").weight.shape[1] == 8


def test_concat_slices_the_consumer_at_the_right_offsets():
    model, inputs = build("dense_concat")
    with torch.no_grad():  # weaken stem channels 0..7, grow1 channels 8..15, transition outputs 0..7 everywhere
        for weak in (model.stem.weight[:8], model.grow1.weight[:, :8], model.grow2.weight[:, :8],
                     model.grow1.weight[8:], model.grow2.weight[:, 24:], model.transition.weight[:8]):
            weak *= 0.01
        model.transition.weight[:, :8] *= 0.01
        model.transition.weight[:, 24:32] *= 0.01
    traced = to_script(model, inputs, "trace")
    pruned = prune(jit.reload(traced), inputs, scope="layer", reconstruct=False).model
    # transition reads cat([stem, grow1, grow2]) (16 + 16 + 16): it keeps stem 8..15, then grow1 0..7.
    kept_rows = traced.transition.weight[8:]
    assert torch.equal(pruned.transition.weight[:, :8], kept_rows[:, 8:16])
    assert torch.equal(pruned.transition.weight[:, 8:16], kept_rows[:, 16:24])


class ZeroChannelMLP(nn.Module):
    """Half of each hidden layer has zero weights and bias: those channels contribute nothing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        with torch.no_grad():
            for layer in (self.fc1, self.fc2):
                layer.weight[::2] = 0
                layer.bias[::2] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ZeroChannelConvBN(nn.Module):
    """Channels 0..7 of conv1 are dead: zero kernel and bias, BN scale and shift zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)
        with torch.no_grad():
            self.bn1.running_mean.zero_()
            self.bn1.running_var.uniform_(0.5, 1.5)
            for tensor in (self.conv1.weight, self.conv1.bias, self.bn1.weight, self.bn1.bias):
                tensor[:8] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.head(self.conv2(x).mean((2, 3)))


@pytest.mark.parametrize("make, shape", [(ZeroChannelMLP, (12,)), (ZeroChannelConvBN, (3, 8, 8))])
@pytest.mark.parametrize("importance", ["l1", "l2", "activation"])
def test_pruning_dead_channels_leaves_outputs_unchanged(make, shape, importance):
    inputs = (torch.randn(16, *shape),)
    original = to_script(make().eval(), inputs, "trace")
    # Layer scope at 50% removes exactly the dead half of each hidden group; conv2's outputs are all
    # alive, so protect their only reader. BatchNorm statistics are kept: this checks the slicing alone.
    result = prune(
        jit.reload(original), inputs, scope="layer", importance=importance, protect=("head",), recalibrate_batchnorm=False
    )
    assert result.details["parameters_after"] < result.details["parameters_before"]
    torch.testing.assert_close(result.model(*inputs), original(*inputs), rtol=1e-5, atol=1e-6)


def test_protected_modules_keep_their_channels():
    model, inputs = build("conv_bn")
    pruned = prune(to_script(model, inputs, "trace"), inputs, protect=("conv1",)).model
    assert pruned.conv1.weight.shape[0] == 16
    assert pruned.conv2.weight.shape[0] < 32


def test_layer_scope_and_round_to():
    model, inputs = build("mlp")
    details = prune(to_script(model, inputs, "trace"), inputs, scope="layer", amount=0.25, round_to=1).details
    assert sorted(g["kept"] for g in details["pruned_groups"]) == [24, 24]


def test_global_scope_takes_more_from_the_group_with_weak_channels():
    model, inputs = build("mlp")
    with torch.no_grad():  # 24 of fc1's 32 outputs are weak, in its weights and in fc2's reading of them
        for weak in (model.fc1.weight[:24], model.fc1.bias[:24], model.fc2.weight[:, :24]):
            weak *= 0.01
    traced = to_script(model, inputs, "trace")

    def kept(scope: str) -> dict[str, int]:
        groups = prune(jit.reload(traced), inputs, scope=scope).details["pruned_groups"]
        return {group["modules"][0]: group["kept"] for group in groups}

    assert kept("layer") == {"fc1": 16, "fc2": 16}
    assert kept("global") == {"fc1": 8, "fc2": 24}


def test_small_groups_that_rounding_cannot_shrink_are_reported():
    model, inputs = build("mlp")
    details = prune(to_script(model, inputs, "trace"), inputs, amount=0.1, round_to=16).details
    assert details["pruned_groups"] == []
    assert any("rounding" in g["reason"] for g in details["skipped_groups"])
    assert details["parameters_after"] == details["parameters_before"]


class ControlFlow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if bool(x.sum() > 0):
            h = h * 2
        return self.fc3(torch.relu(self.fc2(h)))


class HeadSplit(nn.Module):
    """Reshape [N, L, 16] -> [N, L, 2, 2, 4]: the channel dim is split into more than heads and their width."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 16), nn.Linear(16, 16)
        self.ffn_up, self.ffn_down = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        heads = self.qkv(x).view(n, length, 2, 2, 4).softmax(-1).reshape(n, length, 16)
        return self.ffn_down(torch.relu(self.ffn_up(self.out(heads)))).mean(1)


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.relu(self.conv1(x))))
        return self.head(self.conv3(x).mean((2, 3)))


@pytest.mark.parametrize(
    "make, shape, how, skipped_module, reason",
    [
        (ControlFlow, (8,), "script", "fc1", "prim::If"),
        (HeadSplit, (5, 16), "trace", "qkv", "splitting"),
        (GroupedConv, (3, 8, 8), "trace", "conv1", "grouped convolution"),
    ],
)
def test_what_the_analysis_does_not_understand_is_skipped_with_a_reason(make, shape, how, skipped_module, reason):
    torch.manual_seed(0)
    inputs = (torch.randn(6, *shape),)
    original = to_script(make().eval(), inputs, how)
    result = prune(jit.reload(original), inputs)
    assert result.model(*inputs).shape == original(*inputs).shape
    reasons = [g["reason"] for g in result.details["skipped_groups"] if skipped_module in g["modules"]]
    assert reasons and all(reason in r for r in reasons), result.details["skipped_groups"]
    assert result.details["pruned_groups"], "the understood part of the model is still pruned"


@pytest.mark.parametrize("how", ["trace", "script"])
def test_batchnorm_recalibration_takes_the_statistics_of_its_input(how):
    model, inputs = build("residual_downsample", batch=64)
    module = to_script(model, inputs, how)
    conv, norm = getattr(module.stem, "0"), getattr(module.stem, "1")
    stem_output = nn.functional.conv2d(inputs[0], conv.weight, conv.bias, padding=1).detach()

    names = recalibrate_batchnorm(module, Batch(inputs))

    assert names == ["stem.1", "branch.1", "branch.4", "downsample.1"]
    torch.testing.assert_close(norm.running_mean, stem_output.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, stem_output.var((0, 2, 3)))
    assert not norm.training, "the model stays in eval mode"


def test_batchnorm1d_recalibration_never_gets_a_chunk_of_one_sample():
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    inputs = (torch.randn(CHUNK + 1, 6),)
    module = to_script(model, inputs, "trace")

    assert recalibrate_batchnorm(module, Batch(inputs)) == ["1"]
    torch.testing.assert_close(getattr(module, "1").running_mean, model[0](inputs[0]).mean(0).detach())


@pytest.mark.parametrize("how", ["trace", "script"])
def test_batchnorm_recalibration_raises_fidelity_after_pruning(how):
    model, inputs = trained("residual_downsample", batch=200)
    calibration, held_out = Batch(inputs).split(0.5, seed=0)
    original = to_script(model, inputs, how)
    reference = run_model(original, held_out)

    def cosine_after_pruning(recalibrate: bool) -> float:
        # Without reconstruction, which would make up for most of the shift by itself.
        config = PruneStructuredConfig(amount=0.5, recalibrate_batchnorm=recalibrate, reconstruct=False)
        result = prune_structured(jit.reload(original), calibration, config)
        assert ("recalibrated_batchnorm" in result.details) == recalibrate
        return compare_outputs(reference, run_model(jit.reload(result.model), held_out)).cosine

    assert cosine_after_pruning(True) > cosine_after_pruning(False) + 0.1


def test_spec_parses_by_name():
    config = parse_pass_spec({"pass": "prune_structured", "amount": 0.3, "scope": "layer", "protect": ["head"]})
    assert isinstance(config, PruneStructuredConfig) and config.protect == ("head",)
    with pytest.raises(ValueError):
        parse_pass_spec({"pass": "prune_structured", "amount": 1.0})
