"""Fidelity of a candidate's outputs against the original's: agreement, cosine, SQNR, error, accuracy."""

from __future__ import annotations

import math

import torch

from .outputs import NamedOutputs, is_class_scores
from .report import Fidelity, OutputFidelity


def compare_outputs(
    reference: NamedOutputs, candidate: NamedOutputs, labels: torch.Tensor | None = None
) -> Fidelity:
    """Per-output metrics plus the worst case over outputs (that is what a tolerance is checked on)."""
    if [n for n, _ in reference] != [n for n, _ in candidate]:
        raise ValueError(f"output names differ: {[n for n, _ in reference]} vs {[n for n, _ in candidate]}")
    per_output = [_output_fidelity(name, ref, cand) for (name, ref), (_, cand) in zip(reference, candidate)]
    agreements = [o.agreement for o in per_output if o.agreement is not None]
    fidelity = Fidelity(
        samples=int(reference[0][1].shape[0]),
        outputs=per_output,
        agreement=min(agreements) if agreements else None,
        cosine=min(o.cosine_mean for o in per_output),
        cosine_min=min(o.cosine_min for o in per_output),
        sqnr_db=min(o.sqnr_db for o in per_output),
        max_abs_error=max(o.max_abs_error for o in per_output),
    )
    scores = first_class_scores(reference)
    if labels is not None and scores is not None:
        index = [n for n, _ in reference].index(scores)
        fidelity.accuracy_original = accuracy(reference[index][1], labels)
        fidelity.accuracy = accuracy(candidate[index][1], labels)
        fidelity.accuracy_drop = fidelity.accuracy_original - fidelity.accuracy
    return fidelity


def first_class_scores(outputs: NamedOutputs) -> str | None:
    for name, tensor in outputs:
        if is_class_scores(tensor):
            return name
    return None


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    # Held-out samples from the unlabeled set carry a negative label (calibration.IGNORE_LABEL).
    known = labels >= 0
    return float((scores.argmax(dim=1)[known] == labels[known]).float().mean())


def _output_fidelity(name: str, reference: torch.Tensor, candidate: torch.Tensor) -> OutputFidelity:
    if reference.shape != candidate.shape:
        raise ValueError(f"output {name!r}: shape {tuple(candidate.shape)} differs from the original's {tuple(reference.shape)}")
    ref = reference.detach().double().reshape(reference.shape[0], -1)
    cand = candidate.detach().double().reshape(candidate.shape[0], -1)
    cosine = _cosine_per_sample(ref, cand)
    noise = float(((ref - cand) ** 2).sum())
    signal = float((ref**2).sum())
    return OutputFidelity(
        name=name,
        shape=list(reference.shape),
        agreement=float((reference.argmax(1) == candidate.argmax(1)).float().mean()) if is_class_scores(reference) else None,
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        sqnr_db=math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf),
        max_abs_error=float((ref - cand).abs().max()) if ref.numel() else 0.0,
    )


def _cosine_per_sample(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    # Two all-zero samples are identical (cosine 1), not undefined.
    dot = (ref * cand).sum(1)
    norms = ref.norm(dim=1) * cand.norm(dim=1)
    both_zero = (ref.norm(dim=1) == 0) & (cand.norm(dim=1) == 0)
    cosine = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    return torch.where(both_zero, torch.ones_like(cosine), cosine)
