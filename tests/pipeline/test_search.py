"""The search: space expansion, budgets, dominance, folds, fallback, Pareto front, report.html."""

from __future__ import annotations

import pytest
import torch

import tiny_models
from conftest import FAST
from optimizer_pipeline import jit, optimize, parse_config
from optimizer_pipeline.intake.calibration import Batch
from optimizer_pipeline.config import Tolerance
from optimizer_pipeline.passes import parse_pass_spec
from optimizer_pipeline.fidelity.references import make_references
from optimizer_pipeline.search.runner import run_search
from optimizer_pipeline.passes import Plan
from optimizer_pipeline.search.space import expand_space
from wire.contract.pareto import pareto_front
from wire.contract.report import CandidateReport


def _names(plans) -> list[str]:
    return [" → ".join(step.label() for step in plan) for plan in plans]


def test_list_values_expand_into_every_combination():
    plans = expand_space({"quantize": [{"pass": "quantize_static", "observer": ["histogram", "minmax"], "per_channel": [True, False]}]})
    assert len(plans) == 4
    assert {(p[0].observer, p[0].per_channel) for p in plans} == {("histogram", True), ("histogram", False), ("minmax", True), ("minmax", False)}


def test_stages_combine_in_order_and_null_skips_a_stage():
    plans = expand_space({"prune": [None, {"pass": "prune_unstructured", "amount": [0.2, 0.4]}], "quantize": [None, {"pass": "quantize_dynamic"}]})
    assert _names(plans) == [
        "quantize_dynamic",
        "prune_unstructured(amount=0.2)",
        "prune_unstructured(amount=0.2) → quantize_dynamic",
        "prune_unstructured(amount=0.4)",
        "prune_unstructured(amount=0.4) → quantize_dynamic",
    ]


def test_nothing_follows_a_finishing_pass():
    assert not Plan([parse_pass_spec("quantize_static"), parse_pass_spec("freeze")]).is_valid
    assert not Plan([parse_pass_spec("freeze"), parse_pass_spec({"pass": "prune_unstructured"})]).is_valid
    assert Plan([parse_pass_spec({"pass": "prune_unstructured"}), parse_pass_spec("quantize_static")]).is_valid


def test_grid_search_skips_plans_dominated_by_a_cheaper_miss():
    archive, inputs = tiny_models.mlp()
    config = {
        **FAST,
        "tolerance": {"metric": "cosine", "threshold": 0.99999},
        "search": {"strategy": "grid", "space": {"prune": [{"pass": "prune_unstructured", "amount": [0.3, 0.6, 0.9]}]}},
    }
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    statuses = [(c.name, c.status) for c in report.candidates]
    assert statuses == [
        ("prune_unstructured", "ok"),
        ("prune_unstructured(amount=0.6)", "skipped"),
        ("prune_unstructured(amount=0.9)", "skipped"),
    ]
    assert "amount 0.3 already missed" in report.candidates[1].error
    assert report.search.trials_run == 1 and report.search.trials_skipped == 2
    assert report.chosen.candidate == "original"


def test_random_search_is_seeded_has_no_repeats_and_stops_at_max_trials():
    archive, inputs = tiny_models.mlp()
    space = {"quantize": [{"pass": "quantize_static", "observer": ["histogram", "minmax"], "per_channel": [True, False]}, {"pass": "freeze"}]}

    def trial_names(seed: int) -> list[str]:
        config = {**FAST, "search": {"strategy": "random", "seed": seed, "max_trials": 3, "space": space}}
        report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
        assert report.search.stopped_because == "max_trials (3) reached"
        return [c.name for c in report.candidates]

    first = trial_names(seed=1)
    assert len(first) == len(set(first)) == 3
    assert trial_names(seed=1) == first


class TickingClock:
    """Moves `tick` seconds each time it is read: the search's budget decisions then follow its own
    steps, the same on every run, whatever the load on the CPU."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_search_stops_within_its_time_budget():
    archive, inputs = tiny_models.cnn_bn()
    amounts = [round(0.05 * i, 2) for i in range(1, 19)]
    # A fine-tuning this long would overrun the budget on its own: the deadline has to cut it short.
    finetune = [None, {"pass": "finetune", "epochs": 1000, "patience": 1000}]
    space = {"prune": [{"pass": "prune_unstructured", "amount": amounts}], "finetune": finetune, "quantize": [{"pass": "freeze"}]}
    # Every plan passes (no dominance skips), so the 36 plans cannot all run in 1 s.
    config = {**FAST, "min_speedup": 0.01, "tolerance": {"metric": "cosine", "threshold": 0.0}, "search": {"strategy": "grid", "time_budget_s": 1, "space": space}}
    settings = parse_config(config)
    references = make_references(jit.load_archive(archive), Batch(inputs), settings, threads=1)
    clock = TickingClock(0.05)
    outcome = run_search(references, settings, settings.search_config(), lambda stage, fraction: None, clock(), clock)
    summary = outcome.summary
    assert "time budget" in summary.stopped_because
    assert 0 < summary.trials_run < summary.space_size
    # Training stops at the deadline; the rest of the trial it was in (freezing, timing) may run past it.
    assert summary.elapsed_s <= 1.2
    finetuned = [b.report for b in outcome.built if "finetune" in b.report.name]
    assert finetuned and any("cut_short" in c.details.get("1:finetune", {}) for c in finetuned)


def test_folds_cross_validate_and_calibration_never_sees_the_held_out_fold():
    archive, inputs = tiny_models.cnn_bn(batch=30)
    # Any fidelity passes: every fold is evaluated (no early stop for a tolerance out of reach).
    config = {**FAST, "tolerance": {"metric": "cosine", "threshold": 0.0}, "search": {"folds": 3, "space": {"quantize": [{"pass": "quantize_static"}]}}}
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    trial = report.candidates[0]
    assert len(trial.fidelity_folds) == 3
    assert trial.fidelity_mean == pytest.approx(sum(trial.fidelity_folds) / 3)
    assert trial.fidelity_std >= 0
    assert trial.details["0:quantize_static"]["calibration_samples"] == 20
    assert report.search.folds == 3


def test_a_quantized_plan_that_misses_is_retried_with_sensitive_layers_in_float():
    archive, inputs = tiny_models.residual()
    config = {
        **FAST,
        "min_speedup": 0.001,  # let any speed qualify: this test is about the retry, not the timing
        "tolerance": {"metric": "sqnr_db", "threshold": 1e9},
        "search": {"strategy": "grid", "time_budget_s": 300, "space": {"quantize": [{"pass": "quantize_static"}]}},
    }
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    trials = report.candidates
    assert [t.origin for t in trials] == ["space", "fallback", "fallback", "fallback", "fallback"]
    assert [t.plan[0].get("skip_sensitive", 0) for t in trials] == [0, 1, 2, 4, 8]
    ranked = trials[1].details["0:quantize_static"]["sensitivity"]
    assert trials[1].details["0:quantize_static"]["float_layers"] == [ranked[0][0]]
    assert [error for _, error in ranked] == sorted((error for _, error in ranked), reverse=True)


def test_pareto_front_keeps_only_undominated_trials():
    def trial(name: str, speedup: float, cosine: float) -> CandidateReport:
        return CandidateReport(name=name, plan=[], status="ok", speedup=speedup, fidelity_mean=cosine)

    trials = [trial("fast-rough", 4.0, 0.95), trial("slow-exact", 1.2, 1.0), trial("dominated", 1.1, 0.97), trial("middle", 2.0, 0.99)]
    front = pareto_front(trials, Tolerance(metric="cosine", threshold=0.99))
    assert front == ["fast-rough", "middle", "slow-exact"]


def test_objective_size_picks_the_smallest_qualifying_variant():
    archive, inputs = tiny_models.cnn_bn()
    config = {
        **FAST,
        "min_speedup": 0.001,
        "tolerance": {"metric": "cosine", "threshold": 0.9},
        # A fixed budget: under the automatic one a busy machine could end the search after one trial.
        "search": {"objective": "size", "strategy": "grid", "time_budget_s": 120, "space": {"quantize": [{"pass": "freeze"}, {"pass": "quantize_static"}]}},
    }
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    sizes = {c.name: c.size_bytes for c in report.candidates}
    assert report.chosen.candidate == min(sizes, key=sizes.get) == "quantize_static"
    assert "smallest candidate" in report.chosen.reason


def test_a_cached_prefix_can_be_fine_tuned():
    """Plans sharing `prune` reuse its result; fine-tuning that copy must still train real leaves."""
    archive, inputs = tiny_models.mlp()
    space = {
        "prune": [{"pass": "prune_unstructured", "amount": 0.5}],
        "finetune": [None, {"pass": "finetune", "epochs": 2}],
    }
    config = {**FAST, "search": {"strategy": "grid", "time_budget_s": 300, "space": space}}
    report = optimize(archive, tiny_models.calibration_bytes(inputs), config).report
    assert [c.status for c in report.candidates] == ["ok", "ok"], [c.error for c in report.candidates]
    assert report.candidates[1].details["1:finetune"]


def test_folds_stop_once_the_tolerance_is_out_of_reach():
    archive, inputs = tiny_models.cnn_bn(batch=30)
    # int8 never reproduces float exactly, so after one fold even perfect other folds cannot average 1.0.
    config = {**FAST, "tolerance": {"metric": "cosine", "threshold": 1.0}, "search": {"folds": 3, "space": {"quantize": [{"pass": "quantize_static"}]}}}
    trial = optimize(archive, tiny_models.calibration_bytes(inputs), config).report.candidates[0]
    assert trial.status == "ok" and not trial.meets_tolerance
    assert len(trial.fidelity_folds) == 1
    assert any(note.startswith("stopped after 1 of 3 folds") for note in trial.notes)


def test_the_default_first_plans_leave_dynamic_int8_out_on_a_conv_model_only():
    from optimizer_pipeline import jit
    from optimizer_pipeline.config import DEFAULT_CANDIDATES
    from optimizer_pipeline.search.first_plans import first_plans_for

    cnn, _ = tiny_models.cnn_bn()
    kept, note = first_plans_for(DEFAULT_CANDIDATES, jit.load_archive(cnn))
    assert [plan[-1]["pass"] for plan in DEFAULT_CANDIDATES if plan not in kept] == ["quantize_dynamic", "ort_quantize_dynamic"]
    assert "94% of the weights are conv kernels" in note
    mlp, _ = tiny_models.mlp()
    assert first_plans_for(DEFAULT_CANDIDATES, jit.load_archive(mlp)) == (DEFAULT_CANDIDATES, None)
