"""Grid or random search over plans, under a trial and time budget.

Shared work is reused (PlanBuilder caches every plan prefix, per fold), plans dominated by a
cheaper miss are skipped (if 30% pruning misses the tolerance, 50% is not tried), and a quantized
plan that misses is retried with its most sensitive layers kept in float.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wire.contract.pareto import pareto_front
from wire.contract.report import SearchSummary

from ..candidates import FINALISTS, BuiltCandidate, PlanBuilder, Reference, measure_latency, new_report, not_run_again
from ..config import PipelineConfig
from ..measure.deadline import Clock, deadline
from ..passes.base import PassConfig, parse_pass_spec
from .compound import compound_plans
from .folds import build_on_folds, is_near_miss, rejudge_on_folds, summarize_folds
from .settings import SearchConfig
from ..passes.plan import Plan
from .space import DEFAULT_SPACE, expand_space

Notify = Callable[[str, float], None]

AUTO_BUDGET_FACTOR = 4.0  # the automatic budget is this many times what the first (single-pass) trials took
AUTO_BUDGET_BOUNDS = (5.0, 120.0)
FALLBACK_STEPS = (1, 2, 4, 8)


@dataclass
class Trial:
    plan: Plan
    origin: str

    @property
    def name(self) -> str:
        return self.plan.name


@dataclass
class SearchOutcome:
    built: list[BuiltCandidate]
    summary: SearchSummary


@dataclass
class _State:
    started: float
    clock: Clock
    budget: float
    budget_source: str
    durations: list[float] = field(default_factory=list)
    misses: dict[str, float] = field(default_factory=dict)  # dominance signature -> smallest amount that missed
    met: dict[str, float] = field(default_factory=dict)  # compound plans: signature -> largest amount that met the tolerance
    compound_note: str | None = None
    budget_after_compound: float | None = None  # the budget to fall back to once the compound plans ran
    ran: int = 0
    skipped: int = 0
    latency_seconds: float = 0.0  # the longest latency measurement of one trial so far

    def elapsed(self) -> float:
        return self.clock() - self.started

    def deadline(self) -> float | None:
        """When the trials must end (the budget less the re-timing reserve); none while the first trials set an automatic budget."""
        return None if self.budget_source == "pending" else self.started + self.budget - self.reserve()

    def reserve(self) -> float:
        """Time kept back for timing the finalists and the original alone after the search: each, in
        each of its (by default three) processes, costs about a quarter of a trial's comparison (one
        variant at one batch size instead of two variants at two)."""
        return (FINALISTS + 1) * 3 / 4 * self.latency_seconds


def run_search(
    references: list[Reference],
    settings: PipelineConfig,
    search: SearchConfig,
    notify: Notify,
    started: float,
    clock: Clock = time.perf_counter,
    spare_folds: Callable[[], list[Reference]] | None = None,
) -> SearchOutcome:
    """Run trials until the space, max_trials or the time budget runs out.

    `spare_folds` makes the K-fold references a near miss is re-judged on (search.near_miss_folds),
    called once, on the first near miss.

    The budget counts from `started` (the start of the whole optimization, a `clock` value) and keeps
    back the time the finalists' re-timing will take, so the run as a whole ends within it. Every
    budget decision reads `clock`, so a test can drive it with a clock of its own."""
    space_plans = expand_space(search.space or DEFAULT_SPACE)
    first = [Trial(Plan(parse_pass_spec(s) for s in plan), "first") for plan in (search.first or [])]  # valid: checked when parsed
    queue = first + [Trial(plan, "space") for plan in _ordered(space_plans, search)]
    queue = _without_repeats(queue)
    builders = [PlanBuilder(reference) for reference in references]
    spares = functools.cache(lambda: [PlanBuilder(reference) for reference in spare_folds()]) if spare_folds is not None else None
    state = _State(
        started=started,
        clock=clock,
        budget=search.time_budget_s or AUTO_BUDGET_BOUNDS[1],
        budget_source="config" if search.time_budget_s else "pending",
    )
    built: list[BuiltCandidate] = []
    stopped = "the space was exhausted"
    while queue:
        if state.budget_source == "pending" and state.ran and queue[0].origin != "first":
            _set_auto_budget(state)
        if search.compound and state.compound_note is None and state.ran and queue[0].origin != "first":
            _queue_compound(state, built, queue, references[0], settings)
        if state.budget_after_compound is not None and queue[0].origin not in ("compound", "fallback"):
            # The extra time was for the compound plans, not for random trials of the space.
            state.budget = max(state.budget_after_compound, state.elapsed() + state.reserve())
            state.budget_after_compound = None
        if search.max_trials is not None and state.ran >= search.max_trials:
            stopped = f"max_trials ({search.max_trials}) reached"
            break
        estimate = max(state.durations[-5:], default=0.0)
        # An automatic budget is only known once the first trials ran; they always run in full.
        end = state.deadline()
        if end is not None and clock() + estimate > end:
            stopped = "the next trial would not fit in the time budget"  # the budget itself is stated once, in time_budget_s
            break
        trial = queue.pop(0)
        not_run = not_run_again(trial.name, trial.plan)
        if not_run is not None:  # it exceeded its deadline in an earlier run of this job (watch.py)
            not_run.report.origin = trial.origin
            built.append(not_run)
            if not_run.report.status == "skipped":
                state.skipped += 1
            else:
                state.ran += 1
            continue
        reason = _dominated(trial.plan, state.misses) or (_pruning_less(trial.plan, state.met) if trial.origin == "compound" else None)
        if reason:
            built.append(_skipped(trial, reason))
            state.skipped += 1
            continue
        notify(f"trial {state.ran + 1}: {trial.name}", min(0.95, 0.05 + 0.9 * _progress(state, search, queue)))
        trial_started = clock()
        with deadline(state.deadline(), clock):
            candidate = _run_trial(trial, builders, settings, state, spares, _best_met_speedup(built))
        state.durations.append(clock() - trial_started)
        state.ran += 1
        built.append(candidate)
        _learn(candidate, trial, state, queue, search, settings)
    if state.budget_source == "pending":
        _set_auto_budget(state)
    summary = SearchSummary(
        strategy=search.strategy,
        objective=search.objective,
        space_size=len(space_plans),
        trials_run=state.ran,
        trials_skipped=state.skipped,
        folds=len(references),
        time_budget_s=round(state.budget, 1),
        budget_source=state.budget_source,
        elapsed_s=round(state.elapsed(), 1),
        stopped_because=stopped,
        pareto=pareto_front([b.report for b in built], references[0].tolerance),
        compound_note=state.compound_note,
    )
    return SearchOutcome(built, summary)


def _queue_compound(state: _State, built: list[BuiltCandidate], queue: list[Trial], reference: Reference, settings: PipelineConfig) -> None:
    """After the first trials: queue the compound plans that can pay and be certified, next in line,
    and give the search the optimization's whole time budget for them (unless the config set one)."""
    seconds_left = settings.time_budget_seconds - state.elapsed() - state.reserve()
    decision = compound_plans(built, reference, seconds_left)
    state.compound_note = decision.note
    if not decision.plans:
        return
    queue[:0] = [Trial(plan, "compound") for plan in decision.plans]
    if state.budget_source != "config" and state.budget < settings.time_budget_seconds:
        state.budget_after_compound = state.budget
        state.budget = settings.time_budget_seconds
        state.budget_source = f"time_budget_seconds ({settings.time_budget_seconds:g} s): compound plans were queued"


def _ordered(plans: list[Plan], search: SearchConfig) -> list[Plan]:
    if search.strategy == "grid":
        return plans
    shuffled = list(plans)
    random.Random(search.seed).shuffle(shuffled)
    return shuffled


def _without_repeats(queue: list[Trial]) -> list[Trial]:
    seen: set[str] = set()
    unique = []
    for trial in queue:
        if trial.plan.key not in seen:
            seen.add(trial.plan.key)
            unique.append(trial)
    return unique


def _set_auto_budget(state: _State) -> None:
    spent = state.elapsed()
    low, high = AUTO_BUDGET_BOUNDS
    state.budget = min(high, max(low, AUTO_BUDGET_FACTOR * spent))
    state.budget_source = f"auto: {AUTO_BUDGET_FACTOR:g} x the {spent:.1f} s the first trials took, within [{low:g}, {high:g}] s"
    # The single passes are the floor the search must never fall below, so they always run; on a
    # model where they alone pass the cap, the budget is what they took plus the re-timing.
    if state.budget < spent + state.reserve():
        state.budget = spent + state.reserve()
        state.budget_source = (
            f"auto: the first trials alone took {spent:.1f} s, past the {high:g} s cap; they always run in full, "
            f"so the budget is that plus {state.reserve():.1f} s for re-timing the finalists"
        )


def _progress(state: _State, search: SearchConfig, queue: list[Trial]) -> float:
    by_time = state.elapsed() / state.budget
    by_trials = state.ran / search.max_trials if search.max_trials else state.ran / (state.ran + len(queue) + 1)
    return max(by_time, by_trials)


def _run_trial(
    trial: Trial, builders: list[PlanBuilder], settings: PipelineConfig, state: _State, spares: Callable[[], list[PlanBuilder]] | None, best_met_speedup: float
) -> BuiltCandidate:
    """Build and judge the plan fold by fold; time it (fold 0's variant) against the original; give
    a near miss its second look on the spare folds."""
    started = state.clock()
    tolerance = builders[0].reference.tolerance
    per_fold = build_on_folds(builders, trial.name, trial.plan, tolerance)
    main = per_fold[0]
    main.report.origin = trial.origin
    failure = next((b for b in per_fold if b.report.status == "failed"), None)
    if failure is not None:
        main.report.status, main.report.error, main.report.failed_pass = "failed", failure.report.error, failure.report.failed_pass
        main.archive = main.loaded = None
    else:
        summarize_folds(main.report, [b.report for b in per_fold], tolerance)
        if len(per_fold) < len(builders):
            main.report.notes.append(
                f"stopped after {len(per_fold)} of {len(builders)} folds: the tolerance was out of reach "
                f"even if every remaining fold scored {tolerance.best_possible:g}"
            )
        timing = state.clock()
        measure_latency(main, builders[0].reference, settings)
        state.latency_seconds = max(state.latency_seconds, state.clock() - timing)
        if spares is not None and is_near_miss(main.report, tolerance, best_met_speedup, settings.min_speedup):
            rejudge_on_folds(main, trial.plan, spares, tolerance)
    main.report.seconds = round(state.clock() - started, 3)
    return main


def _best_met_speedup(built: list[BuiltCandidate]) -> float:
    return max((b.report.speedup or 0.0 for b in built if b.report.status == "ok" and b.report.meets_tolerance), default=0.0)


def _learn(candidate: BuiltCandidate, trial: Trial, state: _State, queue: list[Trial], search: SearchConfig, settings: PipelineConfig) -> None:
    report = candidate.report
    if report.status == "ok" and report.meets_tolerance and trial.origin == "compound":
        signature, amount = _amount_signature(trial.plan)
        if signature is not None:
            state.met[signature] = max(amount, state.met.get(signature, amount))
    if report.status != "ok" or report.meets_tolerance:
        return
    signature, amount = _amount_signature(trial.plan)
    if signature is not None:
        state.misses[signature] = min(amount, state.misses.get(signature, amount))
    fallback = _fallback(trial) if search.sensitive_fallback else None
    # Keeping layers in float only makes a plan slower, so retry only plans that were fast enough.
    # The retry goes next, but after the built-in single passes that have not run yet.
    if fallback is not None and (report.speedup or 0.0) >= settings.min_speedup:
        position = next((i for i, queued in enumerate(queue) if queued.origin != "first"), len(queue))
        queue.insert(position, fallback)


def _amount_signature(plan: Plan) -> tuple[str | None, float]:
    """The plan with its single `amount` knob blanked out, and that amount."""
    with_amount = [i for i, step in enumerate(plan) if "amount" in type(step).model_fields]
    if len(with_amount) != 1:
        return None, 0.0
    index = with_amount[0]
    specs = [step.spec() for step in plan]
    amount = specs[index].pop("amount")
    return json.dumps(specs, sort_keys=True), float(amount)


def _dominated(plan: Plan, misses: dict[str, float]) -> str | None:
    signature, amount = _amount_signature(plan)
    if signature is not None and signature in misses and amount >= misses[signature]:
        return f"dominated: the same plan with amount {misses[signature]:g} already missed the tolerance"
    return None


def _pruning_less(plan: Plan, met: dict[str, float]) -> str | None:
    signature, amount = _amount_signature(plan)
    if signature is not None and signature in met and amount < met[signature]:
        return f"not needed: the same plan pruning {met[signature]:g} met the tolerance, and pruning less is only slower"
    return None


def _fallback(trial: Trial) -> Trial | None:
    for index, step in enumerate(trial.plan):
        field_name = step.fallback_field
        if field_name is None:
            continue
        current = getattr(step, field_name)
        following = next((n for n in FALLBACK_STEPS if n > current), None)
        if following is None:
            return None
        plan = list(trial.plan)
        plan[index] = _with(step, field_name, following)
        return Trial(Plan(plan), "fallback")
    return None


def _with(step: PassConfig, field_name: str, value: int) -> PassConfig:
    spec = step.spec()
    spec[field_name] = value
    return parse_pass_spec(spec)


def _skipped(trial: Trial, reason: str) -> BuiltCandidate:
    report = new_report(trial.name, trial.plan)
    report.status, report.origin, report.error = "skipped", trial.origin, reason
    return BuiltCandidate(report)


__all__ = ["run_search", "SearchOutcome"]
