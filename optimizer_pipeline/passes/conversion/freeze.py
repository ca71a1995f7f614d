"""torch.jit.freeze: inline parameters as constants and fold conv+BN. Not optimize_for_inference,
whose output does not reload for conv models (shared NOTES)."""

from __future__ import annotations

from typing import Literal

import torch

from ... import jit
from ...intake.calibration import Batch
from ..base import PassConfig, PassOutput, register


class FreezeConfig(PassConfig):
    name: Literal["freeze"] = "freeze"

    finishing = True


@register(FreezeConfig)
def freeze(model: jit.ScriptModule, calibration: Batch, config: FreezeConfig) -> PassOutput:
    kept = jit.exported_method_names(model)
    with jit.quiet_torch():
        frozen = torch.jit.freeze(model.eval(), preserved_attrs=kept)
    return PassOutput(frozen, {"preserved_methods": kept})
