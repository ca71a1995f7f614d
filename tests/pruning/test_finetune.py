"""Distillation fine-tuning and quantization-aware training on tiny models, checked on held-out samples."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from optimizer_pipeline import jit
from optimizer_pipeline.measure.deadline import deadline
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.fidelity.measures import compare_outputs
from optimizer_pipeline.intake.model_loading import run_model
from optimizer_pipeline.passes.recovery.augmentation import AugmentationConfig, augmented
from optimizer_pipeline.passes.recovery.finetune import FinetuneConfig, finetune
from optimizer_pipeline.passes.pruning.structured import PruneStructuredConfig, prune_structured
from optimizer_pipeline.passes.quantization.qat import QuantizeQatConfig, quantize_qat

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
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5, reconstruct=False)).model
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
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5, reconstruct=False)).model
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
    student = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5, reconstruct=False)).model
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
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5, reconstruct=False)).model
    with deadline(time.perf_counter()):
        cut = finetune(jit.reload(pruned), calibration, FinetuneConfig(epochs=50, patience=50)).details
    assert len(cut["loss_curve"]) == 1 and cut["cut_short"].startswith("stopped after epoch 1 of 50")
    # Outside a deadline (as after the block), training runs its course.
    full = finetune(jit.reload(pruned), calibration, FinetuneConfig(epochs=3, patience=50)).details
    assert len(full["loss_curve"]) == 3 and "cut_short" not in full


def test_augmented_copies_are_new_inputs_labelled_by_the_teacher():
    model, (images, table) = build("two_inputs_tuple_output", batch=32)
    with jit.quiet_torch():
        teacher = jit.reload(torch.jit.trace(model, (images, table)))
    batch = Batch((images, table), labels=torch.zeros(32, dtype=torch.long), teacher=teacher)
    config = AugmentationConfig(mixup=0.4, noise=0.1, images=True)

    extra = augmented(batch, config, torch.Generator().manual_seed(0))

    assert not torch.allclose(extra.inputs[0], images) and not torch.allclose(extra.inputs[1], table)
    assert extra.labels is None, "labels do not hold for mixed inputs"
    for (_, got), (_, expected) in zip(extra.teacher_outputs, run_model(teacher, extra)):
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="original model"):
        augmented(dataclasses.replace(batch, teacher=None), config, torch.Generator())


def test_flips_only_when_the_config_says_images():
    model, inputs = build("conv_bn", batch=64)
    with jit.quiet_torch():
        teacher = jit.reload(torch.jit.trace(model, inputs))
    batch = Batch(inputs, teacher=teacher)
    plain = augmented(batch, AugmentationConfig(images=False, noise=1e-9), torch.Generator().manual_seed(0)).inputs[0]
    flipped = augmented(batch, AugmentationConfig(images=True), torch.Generator().manual_seed(0)).inputs[0]
    torch.testing.assert_close(plain, inputs[0])
    is_flipped = [torch.equal(flipped[i], inputs[0][i].flip(-1)) for i in range(64)]
    assert 10 < sum(is_flipped) < 54 and all(f or torch.equal(flipped[i], inputs[0][i]) for i, f in enumerate(is_flipped))


def test_finetune_with_mixup_and_noise_recovers_fidelity():
    original, calibration, held_out = original_and_batches("conv_bn")
    calibration = dataclasses.replace(calibration, teacher=original)
    pruned = prune_structured(jit.reload(original), calibration, PruneStructuredConfig(amount=0.5, reconstruct=False)).model
    before = cosine_on(pruned, held_out)

    config = FinetuneConfig(epochs=20, augment=AugmentationConfig(mixup=0.4, noise=0.1))
    after = cosine_on(finetune(jit.reload(pruned), calibration, config).model, held_out)

    assert after > before + 0.05, (before, after)


def test_labels_when_given_add_a_cross_entropy_term():
    original, calibration, _ = original_and_batches("mlp")
    # Labels that disagree with the teacher everywhere: the student starts as the teacher, so the only
    # training loss is the cross-entropy on them.
    teacher_classes = calibration.teacher_outputs[0][1].argmax(1)
    labelled = dataclasses.replace(calibration, labels=(teacher_classes + 1) % 4)

    def first_train_loss(batch: Batch, weight: float) -> float:
        config = FinetuneConfig(epochs=1, steps=1, batch_size=len(batch), label_weight=weight, optimizer="sgd", lr=1e-9)
        return finetune(jit.reload(original), batch, config).details["loss_curve"][0]["train_loss"]

    assert first_train_loss(labelled, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert first_train_loss(calibration, 1.0) == pytest.approx(0.0, abs=1e-9), "no labels, no label term"
    assert first_train_loss(labelled, 1.0) > 0.5
