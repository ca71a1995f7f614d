"""Per-group pruning ratios from measured sensitivity: the overall target is met, sensitive groups stay wider."""

from __future__ import annotations

import pytest
import torch

from optimizer_pipeline import jit
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.channel_groups.allocation import keep_options
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured

from topologies import build


def traced(name: str, batch: int = 64):
    model, inputs = build(name, batch=batch)
    with jit.quiet_torch():
        return model, jit.reload(torch.jit.trace(model, inputs)), inputs


def sensitivity_pruning(module, inputs, **options):
    config = PruneStructuredConfig(scope="sensitivity", round_to=1, **options)
    return prune_structured(jit.reload(module), Batch(inputs), config)


@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_per_group_ratios_add_up_to_the_channel_target(amount):
    _, module, inputs = traced("mlp")
    details = sensitivity_pruning(module, inputs, amount=amount).details
    removed = sum(group["channels"] - group["kept"] for group in details["pruned_groups"])
    # fc1 and fc2 have 32 outputs each; whole channels only, so the target is met at the next channel.
    assert removed == pytest.approx(amount * 64, abs=1)
    assert details["allocation"]["removed_share"] == pytest.approx(removed / 64)
    for group in details["pruned_groups"]:
        assert group["removed_share"] == pytest.approx(1 - group["kept"] / group["channels"], abs=1e-4)
        assert [level["removed"] for level in group["sensitivity"]] == [0.25, 0.5, 0.75]


def conv_bn_macs(model) -> int:
    """conv1, conv2 (8x8 outputs) and the head, from the weights' shapes."""
    return 64 * (model.conv1.weight.numel() + model.conv2.weight.numel()) + model.head.weight.numel()


def test_per_group_ratios_add_up_to_the_macs_target():
    model, module, inputs = traced("conv_bn")
    result = sensitivity_pruning(module, inputs, amount=0.5, amount_of="macs")
    removed_share = 1 - conv_bn_macs(result.model) / conv_bn_macs(model)
    # One channel of conv2 is worth 9 x 16 x 64 MACs: the target is met to within one channel's worth.
    one_channel = 64 * 9 * 16 / conv_bn_macs(model)
    assert 0.5 <= removed_share < 0.5 + 2 * one_channel
    assert result.details["allocation"]["removed_share"] == pytest.approx(removed_share, abs=1e-3)


def test_the_sensitive_group_stays_wider():
    model, inputs = build("mlp")
    with torch.no_grad():  # 24 of fc1's 32 outputs hardly matter; every fc2 output does
        for weak in (model.fc1.weight[:24], model.fc1.bias[:24], model.fc2.weight[:, :24]):
            weak *= 0.01
    with jit.quiet_torch():
        module = jit.reload(torch.jit.trace(model, inputs))
    details = sensitivity_pruning(module, inputs, amount=0.4).details
    kept = {tuple(group["modules"]): group["kept"] for group in details["pruned_groups"]}
    assert kept.get(("fc1", "fc2"), 32) < kept.get(("fc2", "fc3"), 32), details["pruned_groups"]


def test_keep_options_are_multiples_of_round_to():
    assert keep_options(20, 8) == [20, 16, 8]
    assert keep_options(16, 8) == [16, 8]
    assert keep_options(6, 8) == [6]


def test_sensitivities_are_measured_once_per_model_across_amounts():
    from optimizer_pipeline.passes.pruning import sensitivity_memo

    _, module, inputs = traced("conv_bn")
    first = sensitivity_pruning(module, inputs, amount=0.3, amount_of="macs").details
    measured, remembered = sensitivity_memo.counts["measured"], sensitivity_memo.counts["remembered"]
    second = sensitivity_pruning(module, inputs, amount=0.6, amount_of="macs").details
    assert sensitivity_memo.counts["measured"] == measured  # nothing measured again
    assert sensitivity_memo.counts["remembered"] > remembered
    assert [g["sensitivity"] for g in first["pruned_groups"]] == [g["sensitivity"] for g in second["pruned_groups"]]
    # Other data, other measurements.
    sensitivity_pruning(module, tuple(x * 2 for x in inputs), amount=0.3, amount_of="macs")
    assert sensitivity_memo.counts["measured"] > measured
