"""Splitting the calibration batch into what candidates learn from and what judges them.

One hold-out split by default; K folds for cross-validation, where fold k holds out the k-th
slice of a seeded permutation and calibration / fine-tuning only ever see the other folds.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import jit
from ..intake.calibration import Batch, concat
from ..candidates import Reference
from ..config import PipelineConfig
from .measures import judge_outputs
from ..intake.model_loading import run_model


def make_references(
    original: jit.ScriptModule, batch: Batch, settings: PipelineConfig, threads: int, folds: int = 1, unlabeled: Batch | None = None
) -> list[Reference]:
    """`unlabeled` (optional) is split once: one part joins every fold's held-out samples, the rest
    rides along with the training part for the passes that fit weights (Batch.for_fitting)."""
    target = settings.batch_size or min(32, len(batch))
    timing = tuple(batch.head(size) for size in ([1, target] if target > 1 else [1]))
    splits = [batch.split(settings.holdout_fraction, settings.seed)] if folds == 1 else _folds(batch, folds, settings.seed)
    fitting, extra_held_out = _split_unlabeled(unlabeled, settings)
    if fitting is not None:
        fitting = replace(fitting, teacher_outputs=run_model(original, fitting))
    # What each output is (class scores, a regression, an embedding) is read once, from the original's
    # outputs on the whole calibration batch, and holds for every fold and candidate.
    every_output = run_model(original, batch)
    kinds = judge_outputs(every_output, settings.tolerance, batch.labels)
    tolerance = settings.resolved_tolerance(any(k.kind == "class_scores" for k in kinds))
    judgements = judge_outputs(every_output, tolerance, batch.labels) if settings.tolerance is None else kinds
    references = []
    for train, held_out in splits:
        if extra_held_out is not None:
            held_out = concat(held_out, extra_held_out)
        held_out_outputs = run_model(original, held_out)
        references.append(
            Reference(
                original=original,
                train=replace(train, teacher_outputs=run_model(original, train), teacher=original, unlabeled=fitting),
                held_out=held_out,
                held_out_outputs=held_out_outputs,
                timing_batches=timing,
                tolerance=tolerance,
                judgements=tuple(judgements),
                threads=threads,
                unlabeled_held_out=0 if extra_held_out is None else len(extra_held_out),
            )
        )
    return references


def _split_unlabeled(unlabeled: Batch | None, settings: PipelineConfig) -> tuple[Batch | None, Batch | None]:
    """(fitting part, held-out part). A single sample is held out: certifying comes first."""
    if unlabeled is None:
        return None, None
    count = len(unlabeled)
    held = count if count == 1 else min(count - 1, max(1, round(count * settings.unlabeled_holdout_fraction)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(settings.seed))
    fitting = unlabeled.take(order[held:]) if held < count else None
    return fitting, unlabeled.take(order[:held])


def _folds(batch: Batch, folds: int, seed: int) -> list[tuple[Batch, Batch]]:
    if len(batch) < 2 * folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {2 * folds} calibration samples, got {len(batch)}")
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    return [(batch.take(torch.cat([p for j, p in enumerate(parts) if j != k])), batch.take(parts[k])) for k in range(folds)]
