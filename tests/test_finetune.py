"""Distillation fine-tuning and quantization-aware training on tiny models, checked on held-out samples."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from optimizer_pipeline import jit
from optimizer_pipeline.deadline import deadline
from optimizer_pipeline.calibration import Batch
from optimizer_pipeline.fidelity import compare_outputs
from optimizer_pipeline.model_loading import run_model
from optimizer_pipeline.passes.finetune import FinetuneConfig, finetune
from optimizer_pipeline.passes.prune_structured import PruneStructuredConfig, prune_structured
from optimizer_pipeline.passes.quantize_qat import QuantizeQatConfig, quantize_qat

from topologies import build


def original_and_batches(name: str, how: str = "trace", samples: int = 96) -> tuple[jit.ScriptModule, Batch, Batch]:
    """The original model, a calibration batch carrying its outputs, and held-out samples it never sees."""
    model, inputs = build(name, batch=samples)
    with jit.quiet_torch():
        module = torch.jit.trace(model, inputs) if how == "trace" else torch.jit.script(model)
    original = jit.reload(module)
    calibration, held_out = Batch(inputs).split(0.25, seed=0)
    return original, with_teacher(original, calibration), with_teacher(original, held_out)


def with_teacher(original: jit.ScriptModule, batch: Batch) -> Batch:
    return dataclasses.replace(batch, teacher_outputs=run_model(original, batch))


def cosine_on(model: jit.ScriptModule, held_out: Batch) -> float:
    return compare_outputs(held_out.teacher_outputs, run_model(model, held_out)).cosine


@pytest.mark.parametrize("name, optimizer", [("conv_bn", "adam"), ("mlp", "sgd"), ("mlp", "rmsprop")])
def test_finetune_recovers_fidelity_after_structured_pruning(name, optimizer):
    original, calibration, held_out = original_and_batches(name)
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5)).model
    before = cosine_on(pruned, held_out)

    # Default loss and learning rate for each optimizer.
    result = finetune(jit.reload(pruned), calibration, FinetuneConfig(optimizer=optimizer, epochs=40))

    after = cosine_on(result.model, held_out)
    assert after > before + 0.05, (before, after)
    details = result.details
    assert 1 <= len(details["loss_curve"]) <= 40
    assert details["fidelity_after"]["loss"] < details["fidelity_before"]["loss"]
    assert jit.reload(result.model)(*held_out.inputs).shape == held_out.teacher_outputs[0][1].shape


def test_kl_loss_on_class_scores_raises_agreement():
    original, calibration, held_out = original_and_batches("mlp")
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5)).model
    before = compare_outputs(held_out.teacher_outputs, run_model(pruned, held_out))

    result = finetune(pruned, calibration, FinetuneConfig(loss="kl", lr=3e-3, epochs=15))

    after = compare_outputs(held_out.teacher_outputs, run_model(result.model, held_out))
    assert after.agreement >= before.agreement and after.cosine > before.cosine


def test_masks_from_unstructured_pruning_stay_zero():
    original, calibration, _ = original_and_batches("mlp")
    student = jit.reload(original)
    with torch.no_grad():  # our own 50% mask on every weight matrix
        for parameter in student.parameters():
            if parameter.dim() == 2:
                parameter.mul_(torch.rand(parameter.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    zeros = {name: p == 0 for name, p in student.named_parameters() if p.dim() == 2}
    before = {name: p.detach().clone() for name, p in student.named_parameters()}

    result = finetune(student, calibration, FinetuneConfig(optimizer="sgd", lr=0.05, weight_decay=1e-3, epochs=5))

    trained = dict(result.model.named_parameters())
    for name, mask in zeros.items():
        assert torch.all(trained[name][mask] == 0), name
        assert not torch.equal(trained[name], before[name]), f"{name} was not trained"
    assert sorted(result.details["masked_parameters"]) == sorted(zeros)


def test_batchnorm_statistics_stay_frozen_by_default():
    # Scripted, so BatchNorm reads the training flag at run time (a trace bakes eval mode in).
    original, calibration, _ = original_and_batches("conv_bn", how="script", samples=48)
    student = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5)).model
    running_mean, weight = student.bn2.running_mean.clone(), student.conv2.weight.detach().clone()

    result = finetune(student, calibration, FinetuneConfig(lr=3e-3, epochs=3))

    assert result.details["best_epoch"] > 0
    assert not torch.equal(result.model.conv2.weight, weight)
    assert torch.equal(result.model.bn2.running_mean, running_mean)
    assert not result.model.training


def test_finetune_needs_the_teachers_outputs():
    original, calibration, _ = original_and_batches("mlp", samples=16)
    with pytest.raises(ValueError, match="original model's outputs"):
        finetune(original, dataclasses.replace(calibration, teacher_outputs=None), FinetuneConfig())


def test_steps_bound_the_training():
    original, calibration, _ = original_and_batches("mlp")
    details = finetune(jit.reload(original), calibration, FinetuneConfig(steps=3, batch_size=8, epochs=50)).details
    assert details["steps"] == 3 and len(details["loss_curve"]) == 1


@pytest.mark.parametrize("name, how", [("conv_bn", "trace"), ("mlp", "script")])
def test_quantization_aware_training_gives_a_quantized_model_that_reloads(name, how):
    original, calibration, held_out = original_and_batches(name, how=how, samples=64)

    result = quantize_qat(jit.reload(original), calibration, QuantizeQatConfig(epochs=2))

    reloaded = jit.reload(result.model)
    assert "quantized::" in reloaded.graph.str() or "quantized." in reloaded.code
    assert cosine_on(reloaded, held_out) > 0.98
    assert len(result.details["loss_curve"]) >= 1


def test_a_passed_deadline_stops_training_after_one_epoch():
    original, calibration, _ = original_and_batches("mlp")
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5)).model
    with deadline(time.perf_counter()):
        cut = finetune(jit.reload(pruned), calibration, FinetuneConfig(epochs=50, patience=50)).details
    assert len(cut["loss_curve"]) == 1 and cut["cut_short"].startswith("stopped after epoch 1 of 50")
    # Outside a deadline (as after the block), training runs its course.
    full = finetune(jit.reload(pruned), calibration, FinetuneConfig(epochs=3, patience=50)).details
    assert len(full["loss_curve"]) == 3 and "cut_short" not in full
