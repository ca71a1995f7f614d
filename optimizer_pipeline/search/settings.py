"""The search section of the pipeline config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["grid", "random"] = "random"
    space: dict[str, list[Any]] | None = Field(None, description="ordered stages of options; default: DEFAULT_SPACE")
    max_trials: int | None = Field(None, ge=1, description="trials to run (skipped ones don't count)")
    time_budget_s: float | None = Field(
        None, gt=0, description="stop starting trials once the next one would overrun this; default scales with the model"
    )
    folds: int = Field(1, ge=1, le=10, description="1 = one hold-out split; K > 1 = K-fold cross-validation")
    seed: int = 0
    objective: Literal["latency", "size"] = "latency"
    first: list[list[dict[str, Any]]] | None = Field(
        None, description="plans to try before the space (default with `auto`: the built-in single passes)"
    )
    sensitive_fallback: bool = Field(True, description="retry quantized plans that miss with sensitive layers in float")
