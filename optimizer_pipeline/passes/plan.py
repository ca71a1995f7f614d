"""A plan: passes applied in order to the uploaded model, and the rules for chaining them.

The rules come from what each registered pass declares (consumes, produces, finishing,
needs_prior_change), so an impossible plan is refused when a config is parsed, and the search
never builds one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import SupportsIndex, overload

from .base import PassConfig

ORIGINAL_FORMAT = "torchscript"  # what an upload is, and what a plan starts from


class Plan(tuple[PassConfig, ...]):
    """An immutable sequence of pass configs that knows its key, its name and its validity."""

    def __new__(cls, steps: Iterable[PassConfig] = ()) -> Plan:
        return super().__new__(cls, steps)

    @overload
    def __getitem__(self, index: SupportsIndex) -> PassConfig: ...
    @overload
    def __getitem__(self, index: slice) -> Plan: ...
    def __getitem__(self, index: SupportsIndex | slice) -> PassConfig | Plan:
        item = super().__getitem__(index)
        return Plan(item) if isinstance(index, slice) else item

    @property
    def key(self) -> str:
        """Identity of the plan (steps and every option), for caches and de-duplication."""
        return json.dumps([step.spec() for step in self], sort_keys=True)

    @property
    def name(self) -> str:
        """What reports call it, e.g. `onnx_export → ort_quantize_static(per_channel=False)`."""
        return " → ".join(step.label() for step in self)

    @property
    def output_format(self) -> str:
        """What the plan's model is at the end: "torchscript", "onnx" or "openvino"."""
        return self[-1].produces if self else ORIGINAL_FORMAT

    def problem(self) -> str | None:
        """Why this plan cannot run, or None when it can."""
        current = ORIGINAL_FORMAT
        for position, step in enumerate(self):
            if position > 0 and self[position - 1].finishing:
                return (
                    f"nothing may follow {self[position - 1].name} (step {position}): it is a last step for its "
                    f"runtime, but {step.name} comes after it"
                )
            if current not in step.consumes:
                after = f"after {self[position - 1].name}" if position else "as uploaded"
                return f"{step.name} (step {position + 1}) takes {' or '.join(step.consumes)}, but the model is {current} {after}"
            if step.needs_prior_change and position == 0:
                return f"{step.name} cannot be the first step: it recovers fidelity after a pass that changed the model"
            current = step.produces
        return None

    @property
    def is_valid(self) -> bool:
        return self.problem() is None
