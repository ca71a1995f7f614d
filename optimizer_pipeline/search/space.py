"""The search space: ordered stages, each a list of options, expanded into valid plans.

An option is `null` (skip the stage), a pass spec whose values may be lists (every combination
is tried, e.g. {"pass": "prune_structured", "amount": [0.3, 0.5]}), or a list of such specs applied
in sequence (e.g. [{"pass": "onnx_export"}, {"pass": "ort_quantize_static"}]). A plan takes one
option per stage, in stage order.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..passes.base import PassConfig, is_known_pass, parse_pass_spec, registered
from ..passes.plan import Plan
StageOption = dict[str, Any] | list[dict[str, Any]] | None

# Used when the config gives no space. Stages run in this order; a pass that is not registered in
# this build (e.g. onnx passes without onnxruntime) is left out.
DEFAULT_SPACE: dict[str, list[StageOption]] = {
    "prune": [
        None,
        {"pass": "prune_structured", "amount": [0.25, 0.5]},
        {"pass": "prune_unstructured", "method": "l1", "amount": [0.3, 0.5]},
    ],
    "finetune": [None, {"pass": "finetune", "optimizer": ["adam", "sgd", "rmsprop"], "lr": [1e-3, 1e-4]}],
    "quantize": [
        None,
        {"pass": "freeze"},
        {"pass": "quantize_dynamic", "per_channel": [True, False]},
        {"pass": "quantize_static", "observer": ["histogram", "minmax"]},
        {"pass": "quantize_qat"},
    ],
    "runtime": [
        None,
        {"pass": "onnx_export"},
        # Per-tensor too: per-channel (the default, for MiniLM's fidelity) ran 1.34x where the plain
        # tool's per-tensor ran 1.84x on the LSTM (bench/peers.py).
        [{"pass": "onnx_export"}, {"pass": "ort_quantize_dynamic", "per_channel": [True, False]}],
        [{"pass": "onnx_export"}, {"pass": "ort_quantize_static", "activations": ["int8", "uint8"]}],
        [{"pass": "onnx_export"}, {"pass": "ov_convert", "precision": ["f32", "bf16"]}],
        [{"pass": "onnx_export"}, {"pass": "ov_convert"}, {"pass": "ov_quantize"}],
    ],
}


def expand_space(space: dict[str, list[StageOption]]) -> list[Plan]:
    """Every valid plan of the space, in grid order (the last stage varies fastest), no repeats."""
    stages = [_expand_stage(options) for options in space.values()]
    plans: list[Plan] = []
    seen: set[str] = set()
    for combination in itertools.product(*stages):
        plan = Plan(step for part in combination for step in part)
        if plan and plan.key not in seen and plan.is_valid and runs_here(plan):
            seen.add(plan.key)
            plans.append(plan)
    return plans


def runs_here(plan: Plan) -> bool:
    """False for a bf16 plan on a CPU without native bf16 (runtimes/cpu.py): never offered there."""
    # Here, not at the top: importing runtimes imports onnxruntime and openvino, which a config must not.
    from ..runtimes.cpu import cpu_has_bf16

    return cpu_has_bf16() or not any(getattr(step, "precision", "f32") == "bf16" for step in plan)


def space_size_bound(space: dict[str, list[StageOption]]) -> int:
    """An upper bound on the plans a space expands to, computed without expanding it.

    It counts a list-typed field's list as choices too, so it may overcount; it never undercounts."""
    return math.prod(sum(_option_size(option) for option in options) for options in space.values())


def _option_size(option: StageOption) -> int:
    return math.prod(
        math.prod(len(value) for value in spec.values() if isinstance(value, list)) for spec in _option_specs(option)
    )


def _option_specs(option: StageOption) -> list[dict[str, Any]]:
    """The pass specs of one stage option (none for `null`); a ValueError says what a malformed one should be."""
    if option is None:
        return []
    sequence = option if isinstance(option, list) else [option]
    if not all(isinstance(spec, dict) for spec in sequence):
        raise ValueError(f'a stage option is null, a pass spec like {{"pass": "freeze"}}, or a list of them; got {option!r}')
    return sequence


def _expand_stage(options: list[StageOption]) -> list[Plan]:
    expanded: list[Plan] = []
    for option in options:
        if option is None:
            expanded.append(Plan())
            continue
        sequence = _option_specs(option)
        if not all(is_known_pass(spec.get("pass")) for spec in sequence):
            continue
        expanded.extend(Plan(steps) for steps in itertools.product(*(_expand_spec(spec) for spec in sequence)))
    return expanded


def _expand_spec(spec: dict[str, Any]) -> list[PassConfig]:
    keys = list(spec)
    values = [value if isinstance(value, list) and key not in _list_fields(spec["pass"]) else [value] for key, value in spec.items()]
    return [parse_pass_spec(dict(zip(keys, combination))) for combination in itertools.product(*values)]


def _list_fields(pass_name: str) -> set[str]:
    """Fields whose value is itself a list (e.g. skip_layers): a list there is one value, not choices."""
    fields = registered(pass_name).config_class.model_fields
    return {name for name, info in fields.items() if "list" in str(info.annotation) or "tuple" in str(info.annotation)}
