"""New training inputs made from a small calibration batch, labelled by the original model.

Distillation from a few hundred samples overfits them; the teacher can label any input, so each
training batch is joined by altered copies of its samples: mixup between two calibration samples,
Gaussian noise scaled to each input's spread, and horizontal flips where the config says the inputs
are images. Only floating-point inputs are altered (token ids and masks stay as they are).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ...intake.calibration import Batch
from ...intake.model_loading import run_model


class AugmentationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    mixup: float = Field(
        0.0, ge=0, le=10, description="alpha of the Beta(alpha, alpha) mixing weight between two samples; 0: no mixup"
    )
    noise: float = Field(0.0, ge=0, le=10, description="std of added Gaussian noise, as a share of each input's std")
    images: bool = Field(False, description="the inputs are images [N, C, H, W]: half of the copies are flipped left-right")

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.noise > 0 or self.images


def augmented(batch: Batch, config: AugmentationConfig, generator: torch.Generator) -> Batch:
    """Altered copies of `batch`'s samples, with the teacher's outputs on them (and no labels)."""
    if batch.teacher is None:
        raise ValueError("augmentation needs the original model (Batch.teacher) to label the new inputs")
    count = len(batch)
    partner = torch.randperm(count, generator=generator)
    weight = (
        torch.distributions.Beta(config.mixup, config.mixup).sample((count,)) if config.mixup > 0 else torch.ones(count)
    )
    flipped = torch.rand(count, generator=generator) < 0.5
    inputs = []
    for tensor in batch.inputs:
        if not tensor.is_floating_point():
            inputs.append(tensor)
            continue
        shape = (count,) + (1,) * (tensor.dim() - 1)
        new = weight.view(shape) * tensor + (1 - weight.view(shape)) * tensor[partner]
        if config.noise > 0:
            new = new + config.noise * tensor.std() * torch.randn(tensor.shape, generator=generator)
        if config.images and tensor.dim() == 4:
            new = torch.where(flipped.view(shape), new.flip(-1), new)
        inputs.append(new)
    new_batch = Batch(tuple(inputs), teacher=batch.teacher)
    return Batch(new_batch.inputs, None, run_model(batch.teacher, new_batch), batch.teacher)
