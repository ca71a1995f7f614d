"""Per-group pruning ratios from measured sensitivity and cost, for one overall target.

Each prunable group is pruned alone at a few levels (its lowest-scoring channels first) and the
loss of the model's outputs is measured on the calibration batch. Then channels are taken away
greedily, `round_to` components at a time, from the group whose next step loses the least per unit of cost
saved (MACs or channels), until the overall target is met. Sensitive groups therefore stay wider,
and cheap-to-remove, expensive-to-run groups shrink most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .analysis import ChannelGroup

# Shares of a group's channels removed when its sensitivity is measured; no group loses more than
# the largest (its loss beyond that was not measured).
LEVELS = (0.25, 0.5, 0.75)


@dataclass
class Allocation:
    keep: dict[ChannelGroup, int]
    # Per group: (share of channels removed, measured loss) at each level, starting at (0, 0).
    sensitivity: dict[ChannelGroup, list[tuple[float, float]]]
    cost_before: float
    cost_after: float


def keep_options(total: int, round_to: int) -> list[int]:
    """Channel counts a group may keep, widest first: all of them, or a positive multiple of `round_to`."""
    multiples = range((total - 1) // round_to * round_to, 0, -round_to)
    return [total, *multiples] if total > round_to else [total]


def allocate(
    groups: Sequence[ChannelGroup],
    amount: float,
    round_to: Mapping[ChannelGroup, int],
    cost: Callable[[dict[ChannelGroup, float]], float],
    loss_when_removed: Callable[[ChannelGroup, int], float],
) -> Allocation:
    """Keep counts that remove at least `amount` of `cost` (a function of each group's kept share).

    `loss_when_removed(group, count)` prunes `count` channels of `group` alone and measures the loss.
    """
    options = {group: keep_options(len(group.components), round_to[group]) for group in groups}
    sensitivity = {group: _measure(group, options[group], loss_when_removed) for group in groups}
    position = {group: 0 for group in groups}

    def share(moved: ChannelGroup | None = None) -> dict[ChannelGroup, float]:
        return {
            group: options[group][position[group] + (group is moved)] / len(group.components) for group in groups
        }

    before = cost({})
    current = cost(share())
    while current > (1 - amount) * before:
        best, best_ratio, best_cost = None, float("inf"), current
        for group in groups:
            step = position[group] + 1
            if step >= len(options[group]):
                continue
            removed_after = 1 - options[group][step] / len(group.components)
            if removed_after > sensitivity[group][-1][0] + 1e-9:
                continue
            after = cost(share(group))
            if after >= current:
                continue
            removed_now = 1 - options[group][position[group]] / len(group.components)
            lost = _interpolate(sensitivity[group], removed_after) - _interpolate(sensitivity[group], removed_now)
            ratio = max(lost, 0.0) / (current - after)
            if ratio < best_ratio:
                best, best_ratio, best_cost = group, ratio, after
        if best is None:
            break  # every group is at its largest measured level: the target cannot be met
        position[best] += 1
        current = best_cost
    keep = {group: options[group][position[group]] for group in groups}
    return Allocation(keep, sensitivity, before, current)


def _measure(group: ChannelGroup, options: list[int], loss_when_removed: Callable[[ChannelGroup, int], float]) -> list[tuple[float, float]]:
    total = len(group.components)
    curve = [(0.0, 0.0)]
    for level in LEVELS:
        keep = min(options, key=lambda count: abs(count - total * (1 - level)))
        removed = (total - keep) / total
        if keep < total and removed > curve[-1][0]:
            curve.append((removed, loss_when_removed(group, total - keep)))
    return curve


def _interpolate(curve: list[tuple[float, float]], removed: float) -> float:
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if removed <= x1:
            return y0 + (y1 - y0) * (removed - x0) / (x1 - x0)
    return curve[-1][1]
