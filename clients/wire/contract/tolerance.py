"""The tolerance: what counts as faithful. A client sends it in the upload's config, the pipeline
judges candidates by it, the report records it, and an unset live guard follows it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .report import Fidelity

# Strict: a string or a bool where a number belongs is refused, not coerced ("0.5" or true for a
# threshold); a JSON integer still passes for a float.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

_THRESHOLD_RANGE = {"agreement": (0.0, 1.0), "cosine": (0.0, 1.0), "accuracy_drop": (0.0, 1.0)}


class Tolerance(BaseModel):
    model_config = STRICT

    metric: Literal["agreement", "cosine", "accuracy_drop", "sqnr_db"]
    threshold: float
    cosine_floor: float | None = Field(
        None, ge=0, le=1, description="also require the mean cosine to reach this (the default tolerance sets 0.99 with agreement); "
        "outputs that are not class scores must reach it under an agreement tolerance (0.99 when unset)"
    )
    class_outputs: list[str] | None = Field(
        None, max_length=1000, description="the outputs that are class scores, judged by top-1 agreement; the rest are judged by cosine. "
        "Default: decided from the outputs (probabilities, or logits: a clear winner, or a top column that varies with a confident softmax) and the labels; [] judges every output by cosine"
    )

    @model_validator(mode="after")
    def _meaningful_threshold(self) -> Tolerance:
        # A threshold outside what the metric can reach is always met or never met: no tolerance at all.
        # It also becomes the model's live guard (routing.default_guard), which has the same bounds.
        low, high = _THRESHOLD_RANGE.get(self.metric, (None, None))
        if low is not None and not low <= self.threshold <= high:
            raise ValueError(f"a {self.metric} threshold must lie in [{low}, {high}], got {self.threshold}")
        return self

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "accuracy_drop"

    def value(self, fidelity: Fidelity) -> float | None:
        return getattr(fidelity, self.metric)

    @property
    def best_possible(self) -> float | None:
        """The metric's best value where it is bounded (agreement and cosine: 1.0), else None."""
        return 1.0 if self.metric in ("agreement", "cosine") else None

    def accepts(self, value: float) -> bool:
        return value <= self.threshold if self.lower_is_better else value >= self.threshold

    def accepts_measured(self, value: float, samples: int) -> bool:
        """Whether the observed value meets the threshold: what keeps a candidate in the running.
        Certifying it takes the one-sided bound (fidelity.assess), which a few samples cannot give."""
        return self.accepts(value)
