"""The search section of the pipeline config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..limits import MAX_PLAN_STEPS, MAX_PLANS, MAX_SEARCH_PLANS, MAX_TIME_BUDGET_S, MAX_TRIALS, Seed
from ..passes.base import parse_pass_spec
from ..passes.plan import Plan
from .space import expand_space, space_size_bound


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: Literal["grid", "random"] = "random"
    space: dict[str, list[Any]] | None = Field(None, description="ordered stages of options; default: DEFAULT_SPACE")
    max_trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="trials to run (skipped ones don't count)")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        le=MAX_TIME_BUDGET_S,
        description="stop starting trials once the next one would overrun this; default scales with the model",
    )
    folds: int = Field(1, ge=1, le=10, description="1 = one hold-out split; K > 1 = K-fold cross-validation")
    near_miss_folds: int = Field(
        4,
        ge=1,
        le=10,
        description="with one hold-out split and no unlabeled set: a candidate faster than every one that met the tolerance, "
        "which missed it by less than its held-out samples can resolve (one flip in 64 class scores), is built again on this "
        "many folds and judged on every calibration sample (1: off)",
    )
    seed: Seed = 0
    objective: Literal["latency", "size"] = "latency"
    first: list[list[dict[str, Any]]] | None = Field(
        None,
        max_length=MAX_PLANS,
        description="plans to try before the space (default with `auto`: the built-in single passes)",
    )
    sensitive_fallback: bool = Field(True, description="retry quantized plans that miss with sensitive layers in float")
    compound: bool = Field(
        False,
        description="after the first plans, try pruning → distillation → int8 plans when int8 alone leaves fidelity headroom and "
        "enough held-out samples can certify them (on in the default search)",
    )

    # Every pass spec is checked here, so that a bad value is the upload's 422, not a failed job later.
    @field_validator("space")
    @classmethod
    def _space_is_valid_and_bounded(cls, space: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if space is not None:
            size = space_size_bound(space)
            if size > MAX_SEARCH_PLANS:
                raise ValueError(f"the space expands to up to {size} plans; at most {MAX_SEARCH_PLANS} are allowed")
            expand_space(space)
        return space

    @field_validator("first")
    @classmethod
    def _first_plans_are_valid(cls, first: list[list[dict[str, Any]]] | None) -> list[list[dict[str, Any]]] | None:
        for plan in first or []:
            if len(plan) > MAX_PLAN_STEPS:
                raise ValueError(f"a plan has {len(plan)} steps; at most {MAX_PLAN_STEPS} are allowed")
            problem = Plan(parse_pass_spec(spec) for spec in plan).problem()
            if problem:
                raise ValueError(f"impossible plan: {problem}")
        return first
