"""The pipeline's config: what to try, what counts as faithful, how to measure. JSON in, pydantic out.

A stored config (the server keeps each upload's) carries the version of its meaning, like the report:
reading one back gives the behaviour it was uploaded with (`stored_config`, `read_stored_config`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Discriminator, Field, SerializeAsAny, Tag, model_validator
from wire.contract.tolerance import STRICT, Tolerance

from .limits import MAX_BATCH_SIZE, MAX_PLAN_STEPS, MAX_PLANS, MAX_SPEEDUP, MAX_TIME_BUDGET_S, MAX_TIMING_SECONDS, Seed
from .passes.base import PassConfig, parse_pass_spec
from .passes.plan import Plan
from .search.settings import SearchConfig

# Strict as the tolerance is: "0.5" or true for a number is refused, not coerced. Pass options keep
# their own (lax) configs.
_STRICT = STRICT

# The meaning of a config. 1: configs stored before there were versions. 2: finetune and quantize_qat
# also train on the labels when the upload has them (`label_weight`, default 0.5); in 1 they did not.
# 3: the search re-judges near misses on folds (`near_miss_folds`, default 4); in 1 and 2 it did not.
CONFIG_VERSION = 3
# The passes whose training uses the labels since version 2 (DistillationConfig, passes/recovery/finetune.py).
_LABEL_TRAINING_PASSES = ("finetune", "quantize_qat")

PassSpec = Annotated[SerializeAsAny[PassConfig], BeforeValidator(parse_pass_spec)]


def _possible(steps: list[PassConfig]) -> list[PassConfig]:
    """A plan's steps, refused here (a 422 for an upload) when they cannot chain."""
    problem = Plan(steps).problem()
    if problem:
        raise ValueError(f"impossible plan: {problem}")
    return steps


# The length is checked before the chain, so an over-long plan is refused as such.
PlanSpec = Annotated[list[PassSpec], Field(max_length=MAX_PLAN_STEPS), AfterValidator(_possible)]
# Tagged, so that a bad search object is reported as such and not also as "should be 'auto'".
SearchSetting = Annotated[
    Annotated[SearchConfig, Tag("settings")] | Annotated[Literal["auto"], Tag("auto")],
    Discriminator(lambda value: "auto" if isinstance(value, str) else "settings"),
]

# The built-in candidate set when the config names no plan.
DEFAULT_CANDIDATES: list[list[dict[str, Any]]] = [
    [{"pass": "freeze"}],
    [{"pass": "quantize_dynamic", "per_channel": True}],
    [{"pass": "quantize_static"}],
    [{"pass": "onnx_export"}],
    [{"pass": "onnx_export"}, {"pass": "ort_quantize_static"}],
    [{"pass": "onnx_export"}, {"pass": "ort_quantize_dynamic"}],
    [{"pass": "onnx_export"}, {"pass": "ov_convert"}],
    [{"pass": "onnx_export"}, {"pass": "ov_convert"}, {"pass": "ov_quantize"}],
]
# Added where the CPU computes bf16 natively (runtimes/cpu.py), never elsewhere: OpenVINO in bf16, and
# its int8 IR with the ops NNCF leaves in float computed in bf16 (ov_quantize keeps the precision).
BF16_CANDIDATES: list[list[dict[str, Any]]] = [
    [{"pass": "onnx_export"}, {"pass": "ov_convert", "precision": "bf16"}],
    [{"pass": "onnx_export"}, {"pass": "ov_convert", "precision": "bf16"}, {"pass": "ov_quantize"}],
]


def default_candidates() -> list[list[dict[str, Any]]]:
    """The built-in candidate set on this machine."""
    # Here, not at the top: importing runtimes imports onnxruntime and openvino, which a config must not.
    from .runtimes.cpu import cpu_has_bf16

    return DEFAULT_CANDIDATES + (BF16_CANDIDATES if cpu_has_bf16() else [])


class LatencyConfig(BaseModel):
    model_config = _STRICT

    warmup: int = Field(3, ge=0, le=100)
    rounds: int = Field(20, ge=3, le=10_000, description="timed calls per model; original and candidate alternate")
    max_seconds: float = Field(
        5.0, gt=0, le=MAX_TIMING_SECONDS, description="time one comparison may take; slow models get fewer rounds (at least 5)"
    )
    # Three, not two: bench/peers.py saw one process in three run a float CNN 2.8x slower on this
    # shared machine, and a median of two is the mean of that outlier and a good one.
    processes: int = Field(
        3, ge=1, le=10, description="fresh processes each finalist and the original are timed in, taking turns; the choice ranks on these"
    )


class CandidateSpec(BaseModel):
    model_config = _STRICT

    name: str | None = None
    plan: PlanSpec = Field(min_length=1)

    def display_name(self) -> str:
        return self.name or Plan(self.plan).name


class PipelineConfig(BaseModel):
    model_config = _STRICT

    version: int = Field(
        CONFIG_VERSION, ge=1, le=CONFIG_VERSION, description="what the config means (1: finetune and quantize_qat ignore labels; 1-2: no near-miss folds)"
    )
    plan: PlanSpec | None = Field(None, description="one explicit plan; replaces the default candidates")
    candidates: list[CandidateSpec] | None = Field(None, max_length=MAX_PLANS, description="several plans to measure against each other")
    search: SearchSetting | None = Field(None, description="search a space of plans instead")
    tolerance: Tolerance | None = Field(
        None, description="default: agreement ≥ 0.99 (on a 95% bound) and cosine ≥ 0.99 for class-score outputs, else cosine ≥ 0.99"
    )
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="target batch size; default min(32, calibration size)")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads while measuring; default: all")
    force: bool = Field(False, description="serve the explicit plan even if it misses the tolerance")
    min_speedup: float = Field(1.05, gt=0, le=MAX_SPEEDUP, description="a candidate must be at least this much faster")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="calibration share held out for fidelity")
    seed: Seed = 0
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    candidate_timeout: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="seconds each step that runs a model may take (measuring the original; building, checking and timing "
        "each candidate); in a server job a candidate past it fails alone and the search goes on. "
        "Default: max(60 s, 20x the original's forward over the calibration set)",
    )
    unlabeled_holdout_fraction: float = Field(
        0.5, gt=0, lt=1, description="share of the unlabeled set held out to certify fidelity; the rest feeds distillation and reconstruction"
    )
    max_unlabeled_samples: int = Field(
        1024, ge=1, le=1_000_000, description="unlabeled samples used at most (each held-out one costs a forward per candidate)"
    )
    time_budget_seconds: float = Field(
        240.0,
        gt=0,
        le=MAX_TIME_BUDGET_S,
        description="wall time the default search aims to finish in, re-timing included (the built-in single passes always run); "
        "raise it to let compound plans (pruning → distillation → int8) run on larger models",
    )
    compound_plans: bool = Field(
        True, description="let the default search try pruning → reconstruction → distillation → int8 when the data can certify it"
    )
    near_miss_folds: int = Field(4, ge=1, le=10, description="the default search's near_miss_folds (see search); 1: off")

    @model_validator(mode="before")
    @classmethod
    def _as_of_its_version(cls, data: Any) -> Any:
        # Older versions keep their behaviour: version 1 trained without labels (its training steps say
        # so explicitly), and neither re-judged near misses.
        if isinstance(data, dict) and data.get("version") in (1, 2):
            data = {"near_miss_folds": 1, **data}
            if isinstance(data.get("search"), dict):
                data["search"] = {"near_miss_folds": 1, **data["search"]}
        if isinstance(data, dict) and data.get("version") == 1:
            return _without_label_training(data)
        return data

    @model_validator(mode="after")
    def _one_source_of_plans(self) -> PipelineConfig:
        if sum(x is not None for x in (self.plan, self.candidates, self.search)) > 1:
            raise ValueError("give at most one of `plan`, `candidates` and `search`")
        if self.force and self.plan is None:
            raise ValueError("`force` applies to an explicit `plan`; add one or drop `force`")
        return self

    def candidate_specs(self) -> list[CandidateSpec]:
        if self.plan is not None:
            return [CandidateSpec(plan=self.plan)]
        if self.candidates is not None:
            return self.candidates
        return [CandidateSpec(plan=plan) for plan in default_candidates()]

    def search_config(self) -> SearchConfig | None:
        """The search to run: the configured one, `auto` (also the default when no plan is given), or None."""
        if self.plan is not None or self.candidates is not None:
            return None
        if isinstance(self.search, SearchConfig):
            return self.search
        return SearchConfig(strategy="random", first=default_candidates(), compound=self.compound_plans, near_miss_folds=self.near_miss_folds)

    def resolved_tolerance(self, has_class_scores: bool) -> Tolerance:
        if self.tolerance is not None:
            return self.tolerance
        # Top-1 agreement alone passes any output that keeps its largest entry (an embedding's
        # largest dimension, say), so the default also asks the outputs themselves to stay close.
        if has_class_scores:
            return Tolerance(metric="agreement", threshold=0.99, cosine_floor=0.99)
        return Tolerance(metric="cosine", threshold=0.99)


def _without_label_training(value: Any) -> Any:
    """`value` (raw JSON) with label_weight 0 on every training step that does not set it, wherever it sits
    (plan, candidates, a search's stages)."""
    if isinstance(value, list):
        return [_without_label_training(item) for item in value]
    if not isinstance(value, dict):
        return value
    updated = {key: _without_label_training(item) for key, item in value.items()}
    if updated.get("pass") in _LABEL_TRAINING_PASSES and "label_weight" not in updated:
        updated["label_weight"] = 0.0
    return updated


def _stored_version(value: Any) -> Any:
    # Configs were stored without a version before there were versions: those are version 1.
    if isinstance(value, dict) and "version" not in value:
        return {**value, "version": 1}
    return value


def stored_config(config: PipelineConfig | None) -> dict[str, Any] | None:
    """A config as the server stores (model.json, the index) and shows it: what the user set, with the
    version (the defaults are left to the version to say). The wire's ModelMeta holds it as JSON."""
    if config is None:
        return None
    return {**config.model_dump(mode="json", by_alias=True, exclude_unset=True), "version": config.version}


def read_stored_config(value: dict[str, Any] | None) -> PipelineConfig | None:
    """A stored config (JSON object) back in its typed form, meaning what it meant when it was stored."""
    return None if value is None else PipelineConfig.model_validate(_stored_version(value))
