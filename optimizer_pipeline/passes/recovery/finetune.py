"""`finetune`: win back fidelity lost to pruning by distillation from the original model.

The calibration batch is the only data, so the teacher is the original model: the pipeline puts
its outputs on the batch (`Batch.teacher_outputs`). The pass trains on part of the batch it is given
and keeps the weights that did best on the rest (an internal split; the pipeline's own held-out
samples never reach a pass). `distill` is also the training loop of `quantize_qat`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from ...measure import deadline, watch
from ... import jit
from ...limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_STEPS, Seed
from ...intake.calibration import Batch
from ...fidelity.measures import compare_outputs
from ...fidelity.outputs import NamedOutputs, flatten_outputs, is_class_scores
from .augmentation import AugmentationConfig, augmented
from ..base import PassConfig, PassOutput, register
from ..modules import original_name

BATCH_NORM_TYPES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})
INTERNAL_SPLIT_SEED = 1
# Best of a sweep on a pruned CNN with the kl loss (sgd diverged at 1e-2; adam did worse at 1e-2 and 1e-3).
DEFAULT_LR = {"adam": 3e-3, "rmsprop": 1e-3, "sgd": 3e-3}
# Calibration plus unlabeled samples trained on at most; `steps` and the deadline bound the time either way.
MAX_FITTING_SAMPLES = 8192


class DistillationConfig(PassConfig):
    """Training options shared by every pass that trains a student against the original model."""

    optimizer: Literal["sgd", "adam", "rmsprop"] = Field("adam", description="sgd uses momentum 0.9")
    lr: float | None = Field(None, gt=0, le=MAX_LEARNING_RATE, description="default: the optimizer's entry in DEFAULT_LR")
    # Recovery from 512 samples was still improving at 60 epochs on pruned CNNs; early stopping ends it.
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="stop after this many optimizer steps (before `epochs` runs out)")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE)
    weight_decay: float = Field(0.0, ge=0, le=1)
    # On a pruned Fashion-MNIST CNN (512 samples) kl recovered 0.4-2 points more accuracy than mse at
    # 50% pruning and 5-9 points more at 70%.
    loss: Literal["mse", "kl"] = Field(
        "kl", description="mse: relative MSE on every output; kl: KL divergence on class scores (mse on the others)"
    )
    temperature: float = Field(2.0, gt=0, le=100, description="softens class scores for the kl loss (4 did worse than 1-2)")
    patience: int = Field(10, ge=1, le=MAX_EPOCHS, description="epochs without improvement on the internal held-out part before stopping")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="part of the given batch used to pick the best epoch")
    freeze_bn_stats: bool = Field(
        True,
        description="keep BatchNorm in eval mode while training: a small calibration batch gives poor statistics "
        "(a traced model runs BatchNorm in eval mode either way: tracing baked it in)",
    )
    augment: AugmentationConfig = Field(
        AugmentationConfig(), description="altered copies of each training batch, labelled by the original model"
    )
    label_weight: float = Field(
        0.5, ge=0, le=10, description="weight of cross-entropy on the labels, when the calibration batch has them"
    )
    seed: Seed = 0


class FinetuneConfig(DistillationConfig):
    name: Literal["finetune"] = Field("finetune", alias="pass")

    needs_prior_change = True


@register(FinetuneConfig)
def finetune(model: jit.ScriptModule, calibration: Batch, config: FinetuneConfig) -> PassOutput:
    details = distill(model, calibration, config)
    return PassOutput(jit.reload(model), details)


def distill(model: jit.ScriptModule, calibration: Batch, config: DistillationConfig) -> dict[str, Any]:
    """Train `model` in place to match `calibration.teacher_outputs`; leaves the best weights, in eval mode.

    Weights that are exactly zero at the start (unstructured pruning) stay zero. Returns the loss
    curve and the fidelity before and after on the internal held-out part.
    """
    if calibration.teacher_outputs is None:
        raise ValueError(
            "finetune needs the original model's outputs on the calibration batch (Batch.teacher_outputs)"
        )
    given = len(calibration)
    # The unlabeled set (if uploaded) is what distillation needs most: far more inputs to match the teacher on.
    calibration = calibration.for_fitting(MAX_FITTING_SAMPLES)
    train, held_out = calibration.split(config.holdout_fraction, seed=INTERNAL_SPLIT_SEED)
    masks = _zero_masks(model)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], config)
    generator = torch.Generator().manual_seed(config.seed)
    curve: list[dict[str, Any]] = []
    steps = 0
    cut_short = None
    with jit.quiet_torch(), torch.random.fork_rng():
        torch.manual_seed(config.seed)  # dropout in scripted models
        before = _fidelity(model, held_out, config)
        best_loss, best_state, best_epoch = before["loss"], _snapshot(model), 0
        for epoch in range(1, config.epochs + 1):
            _train_mode(model, config.freeze_bn_stats)
            losses = []
            for batch in _shuffled(train, config.batch_size, generator):
                student = flatten_outputs(model(*batch.inputs))
                loss = _loss(student, batch.teacher_outputs, config) + _label_loss(student, batch, config)
                if config.augment.active:
                    extra = augmented(batch, config.augment, generator)
                    loss = loss + _loss(flatten_outputs(model(*extra.inputs)), extra.teacher_outputs, config)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                _apply_masks(model, masks)
                losses.append(loss.item())
                steps += 1
                if steps == config.steps:
                    break
            held_loss = _fidelity(model, held_out, config)["loss"]
            curve.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "held_out_loss": held_loss})
            if held_loss < best_loss:
                best_loss, best_state, best_epoch = held_loss, _snapshot(model), epoch
            if epoch - best_epoch >= config.patience or steps == config.steps:
                break
            watch.beat()  # an epoch ended: the step that runs this training is alive
            if deadline.passed():
                cut_short = f"stopped after epoch {epoch} of {config.epochs}: the search's time budget ran out"
                break
        _restore(model, best_state)
        after = _fidelity(model, held_out, config)
    found = {
        "loss_curve": curve,
        "best_epoch": best_epoch,
        "steps": steps,
        "fidelity_before": before,
        "fidelity_after": after,
        "internal_split": {"train": len(train), "held_out": len(held_out)},
        "unlabeled_samples": len(calibration) - given,
        "masked_parameters": sorted(masks),
    }
    if cut_short:
        found["cut_short"] = cut_short
    return found


def _loss(student: NamedOutputs, teacher: NamedOutputs, config: DistillationConfig) -> torch.Tensor:
    terms = []
    for (_, s), (_, t) in zip(student, teacher):
        if not t.is_floating_point():
            continue
        if config.loss == "kl" and is_class_scores(t):
            temperature = config.temperature
            divergence = F.kl_div(
                F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), log_target=True, reduction="batchmean"
            )
            terms.append(divergence * temperature**2)
        else:
            # Relative to the teacher's power, so one lr suits outputs of any scale.
            terms.append(F.mse_loss(s, t) / (t.pow(2).mean() + 1e-12))
    return torch.stack(terms).mean()


def _label_loss(student: NamedOutputs, batch: Batch, config: DistillationConfig) -> torch.Tensor | float:
    """Cross-entropy of the first class-score output against the labels, when there are labels."""
    if batch.labels is None or config.label_weight == 0 or not bool((batch.labels >= 0).any()):
        return 0.0  # unlabeled samples carry a negative label, which cross_entropy ignores
    scores = next((s for (_, s), (_, t) in zip(student, batch.teacher_outputs) if is_class_scores(t)), None)
    return 0.0 if scores is None else config.label_weight * F.cross_entropy(scores, batch.labels)


def _fidelity(model: jit.ScriptModule, batch: Batch, config: DistillationConfig) -> dict[str, float | None]:
    """Distillation loss and the pipeline's fidelity measures against the teacher."""
    model.eval()
    with torch.no_grad():
        student = flatten_outputs(model(*batch.inputs))
    measured = compare_outputs(batch.teacher_outputs, student)
    return {
        "loss": _loss(student, batch.teacher_outputs, config).item(),
        "cosine": measured.cosine,
        "agreement": measured.agreement,
    }


def _shuffled(batch: Batch, size: int, generator: torch.Generator) -> list[Batch]:
    order = torch.randperm(len(batch), generator=generator)
    return [batch.take(order[start:start + size]) for start in range(0, len(batch), size)]


def _train_mode(model: jit.ScriptModule, freeze_bn_stats: bool) -> None:
    """train() for scripted models (a traced model baked BN and dropout behaviour in at trace time)."""
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if original_name(module) in BATCH_NORM_TYPES:
                module.eval()


def _optimizer(parameters: list[torch.nn.Parameter], config: DistillationConfig) -> torch.optim.Optimizer:
    lr = config.lr or DEFAULT_LR[config.optimizer]
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=config.weight_decay)


def _zero_masks(model: jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Masks of the weight matrices/kernels that hold exact zeros: left by unstructured pruning."""
    return {
        name: parameter.detach() != 0
        for name, parameter in model.named_parameters()
        if parameter.dim() >= 2 and bool((parameter == 0).any())
    }


def _apply_masks(model: jit.ScriptModule, masks: dict[str, torch.Tensor]) -> None:
    if not masks:
        return
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in masks:
                parameter.mul_(masks[name])


def _snapshot(model: jit.ScriptModule) -> dict[str, torch.Tensor]:
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def _restore(model: jit.ScriptModule, snapshot: dict[str, torch.Tensor]) -> None:
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.shape == snapshot[name].shape:
                tensor.copy_(snapshot[name])
            else:  # observers in QAT size their statistics on first use
                tensor.data = snapshot[name].clone()
