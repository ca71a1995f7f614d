"""Sensitivity measurements kept across the structured-pruning trials of one model.

A group's loss when pruned alone does not depend on the overall amount: the default search's compound
plans prune one model at several amounts, and each trial measured every group at every level again
(most of a ResNet-18-size trial). Measurements are kept for the model, data and settings they were
made with, identified by a fingerprint of all three; one model's at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch

from ...channel_groups import ChannelGroup
from ...intake.calibration import Batch
from ...jit import ScriptModule

Measure = Callable[[ChannelGroup, int], float]
_kept: tuple[str, dict[tuple[tuple[int, ...], int], float]] = ("", {})
counts = {"measured": 0, "remembered": 0}  # in this process, for the report's details and the tests


def fingerprint(model: ScriptModule, sample: Batch, scores: Mapping[int, float], settings_json: str) -> str:
    """What a sensitivity measurement depends on: the model's code and weights, the samples it runs,
    the channel scores that pick what is removed, and the pass settings other than the amount."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(model.inlined_graph).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(_bytes(tensor))
    for tensor in sample.inputs:
        digest.update(_bytes(tensor))
    digest.update(repr(sorted(scores.items())).encode())
    digest.update(settings_json.encode())
    return digest.hexdigest()


def remembered(key: str, measure: Measure) -> Measure:
    """`measure`, answering from earlier trials' measurements under the same fingerprint `key`."""
    global _kept
    if _kept[0] != key:
        _kept = (key, {})
    known = _kept[1]

    def lookup(group: ChannelGroup, count: int) -> float:
        entry = (tuple(sorted(group.components)), count)
        if entry in known:
            counts["remembered"] += 1
        else:
            known[entry] = measure(group, count)
            counts["measured"] += 1
        return known[entry]

    return lookup


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
