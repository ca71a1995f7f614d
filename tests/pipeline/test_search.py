"""The search: space expansion, budgets, dominance, folds, near misses, fallback, Pareto front, report.html."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


# ---- near misses ----
# A near miss gets a second look on folds: a candidate refused for one flip in 64 held-out class
# scores is judged again on every calibration sample, and kept if the pooled figures allow it.
#
# The model makes the flips exact: class 0's score is x0 + 0.01·x2, class 1's is x1, and pruning 60%
# of the weights zeroes the 0.01. A sample with x0 = 0, x1 = 0.005, x2 = 1 then changes class; every
# other sample has a margin of 1. Two such samples in 256 (0.992 agreement) are within a 0.99 threshold;
# one of them among the 64 held out by the usual split (0.984) is not.

SAMPLES = 256
HELD_OUT = round(SAMPLES * 0.25)  # the default holdout_fraction
FLIP = torch.tensor([0.0, 0.005, 1.0])


class TwoClasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.01], [0.0, 1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def calibration(flips_held_out: int, flips_trained_on: int) -> torch.Tensor:
    """Samples of margin 1, with flipping samples at positions the default split holds out (or not)."""
    torch.manual_seed(0)
    x = torch.zeros(SAMPLES, 3)
    x[:, 0] = torch.randint(0, 2, (SAMPLES,)).float()
    x[:, 1] = 1 - x[:, 0]
    order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(0))  # as Batch.split orders them
    held_out, trained_on = order[:HELD_OUT], order[HELD_OUT:]
    for position in [*held_out[:flips_held_out], *trained_on[:flips_trained_on]]:
        x[position] = FLIP
    return x


def pruned_trial(x: torch.Tensor, **config) -> object:
    settings = {
        **FAST,
        "min_speedup": 0.001,  # any speed qualifies: this is about the verdict, not the timing
        "tolerance": {"metric": "agreement", "threshold": 0.99, "class_outputs": ["output"]},
        "search": {"space": {"prune": [{"pass": "prune_unstructured", "amount": 0.6}]}, **config},
    }
    return optimize(tiny_models._script(TwoClasses()), tiny_models.calibration_bytes((x,)), settings).report.candidates[0]


def test_one_flip_in_64_held_out_is_judged_again_on_every_sample_and_kept():
    trial = pruned_trial(calibration(flips_held_out=1, flips_trained_on=1))
    assert trial.status == "ok" and trial.fidelity.outputs[0].agreement == pytest.approx(1 - 1 / HELD_OUT)
    assert trial.meets_tolerance and not trial.certified  # 254 of 256 agree: within, not certified
    assert len(trial.fidelity_folds) == 4 and trial.fidelity_mean == pytest.approx(1 - 2 / SAMPLES)
    assert any(note.startswith(f"near miss on {HELD_OUT} held-out samples, re-judged on 4 folds") for note in trial.notes)


def test_the_second_look_keeps_a_refusal_the_pooled_samples_confirm():
    trial = pruned_trial(calibration(flips_held_out=1, flips_trained_on=3))  # 4 in 256: 0.984
    assert trial.status == "ok" and not trial.meets_tolerance
    assert any(note.startswith("near miss on") for note in trial.notes)


def test_two_flips_in_64_are_a_clear_miss_and_configs_can_turn_the_second_look_off():
    clear = pruned_trial(calibration(flips_held_out=2, flips_trained_on=0))  # 0.969: its upper bound is under 0.99
    assert not clear.meets_tolerance and len(clear.fidelity_folds or []) <= 1
    assert not any(note.startswith("near miss on") for note in clear.notes)
    off = pruned_trial(calibration(flips_held_out=1, flips_trained_on=1), near_miss_folds=1)
    assert not off.meets_tolerance and not any(note.startswith("near miss on") for note in off.notes)


def test_configs_stored_before_version_3_keep_the_search_without_a_second_look():
    assert parse_config({}).search_config().near_miss_folds == 4
    assert parse_config({"version": 2}).search_config().near_miss_folds == 1
    assert parse_config({"version": 2, "search": {"folds": 1}}).search_config().near_miss_folds == 1
    assert parse_config({"version": 2, "near_miss_folds": 3}).search_config().near_miss_folds == 3
