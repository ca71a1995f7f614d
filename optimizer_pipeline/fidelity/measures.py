"""Fidelity of a candidate's outputs against the original's: agreement, cosine, SQNR, error, accuracy;
and the tolerance's verdict on them, output by output, with a one-sided bound on each."""

from __future__ import annotations

import math

import torch

from wire.contract.confidence import Z_95_ONE_SIDED, agreement_bound, mean_bound, samples_for_agreement, samples_for_mean, wilson_interval
from wire.contract.report import Fidelity, OutputFidelity, OutputJudgement, Verdict
from wire.contract.tolerance import Tolerance

from .outputs import NamedOutputs, is_class_scores, output_kind

# The cosine an output not judged by the tolerance's own metric must keep, when it names no cosine_floor.
DEFAULT_COSINE = 0.99


def judge_outputs(outputs: NamedOutputs, tolerance: Tolerance | None = None, labels: torch.Tensor | None = None) -> list[OutputJudgement]:
    """How each of the original's outputs is judged, and why. `tolerance` None: kinds only, each
    output by agreement if class scores, else by cosine (what the default tolerance does)."""
    declared = tolerance.class_outputs if tolerance is not None else None
    names = [name for name, _ in outputs]
    if declared is not None and (unknown := [n for n in declared if n not in names]):
        raise ValueError(f"tolerance.class_outputs names {unknown}, which the model does not return; its outputs are {names}")
    kinds = []
    for name, tensor in outputs:
        if declared is None:
            kinds.append(output_kind(tensor))
        elif name in declared and is_class_scores(tensor):
            kinds.append(("class_scores", "named in tolerance.class_outputs"))
        else:
            kind = output_kind(tensor)[0]
            kinds.append(("other" if kind == "class_scores" else kind, "not named in tolerance.class_outputs"))
    labelled = labelled_output(outputs, [k for k, _ in kinds], declared)
    if labels is not None and labelled is not None:
        position = names.index(labelled)
        if kinds[position][0] != "class_scores":
            kinds[position] = ("class_scores", "labels were given, and this is the first [N, C] output they fit")
    return [OutputJudgement(name=name, kind=kind, judged_by=_metric_for(name, kind, tolerance, labelled), reason=why)
            for name, (kind, why) in zip(names, kinds)]


def labelled_output(outputs: NamedOutputs, kinds: list[str] | None = None, declared: list[str] | None = None) -> str | None:
    """The output labels are scored against: the first declared or recognised class-score output,
    else the first [N, C] output (labels say it is one)."""
    kinds = kinds or [output_kind(t)[0] for _, t in outputs]
    for (name, tensor), kind in zip(outputs, kinds):
        if kind == "class_scores" and (declared is None or name in declared):
            return name
    return None if declared is not None else first_class_scores(outputs)


def _metric_for(name: str, kind: str, tolerance: Tolerance | None, labelled: str | None) -> str:
    metric = tolerance.metric if tolerance is not None else "agreement"
    if metric == "agreement":
        return "agreement" if kind == "class_scores" else "cosine"
    if metric == "accuracy_drop":
        return "accuracy_drop" if name == labelled else "cosine"
    return metric


def compare_outputs(
    reference: NamedOutputs,
    candidate: NamedOutputs,
    labels: torch.Tensor | None = None,
    judgements: list[OutputJudgement] | None = None,
) -> Fidelity:
    """Per-output metrics plus the worst case over outputs. With `judgements`, agreement and accuracy
    are taken from the outputs judged as class scores only; without, from every [N, C] output."""
    if [n for n, _ in reference] != [n for n, _ in candidate]:
        raise ValueError(f"output names differ: {[n for n, _ in reference]} vs {[n for n, _ in candidate]}")
    per_output = [_output_fidelity(name, ref, cand) for (name, ref), (_, cand) in zip(reference, candidate)]
    if judgements is not None:
        for output, judgement in zip(per_output, judgements):
            output.kind, output.judged_by = judgement.kind, judgement.judged_by
    fidelity = _aggregate(per_output, int(reference[0][1].shape[0]))
    scores = (
        next((j.name for j in judgements if j.kind == "class_scores"), None) if judgements is not None else first_class_scores(reference)
    )
    if labels is not None and scores is not None:
        index = [n for n, _ in reference].index(scores)
        fidelity.accuracy_original = accuracy(reference[index][1], labels)
        fidelity.accuracy = accuracy(candidate[index][1], labels)
        fidelity.accuracy_drop = fidelity.accuracy_original - fidelity.accuracy
    return fidelity


def _aggregate(per_output: list[OutputFidelity], samples: int) -> Fidelity:
    judged = [o for o in per_output if o.judged_by is not None]
    agreements = [o.agreement for o in per_output if o.agreement is not None and (not judged or o.judged_by == "agreement")]
    return Fidelity(
        samples=samples,
        outputs=per_output,
        agreement=min(agreements) if agreements else None,
        cosine=min(o.cosine_mean for o in per_output),
        cosine_min=min(o.cosine_min for o in per_output),
        sqnr_db=min(o.sqnr_db for o in per_output),
        max_abs_error=max(o.max_abs_error for o in per_output),
    )


def pool_fidelity(folds: list[Fidelity]) -> Fidelity:
    """One Fidelity over the held-out samples of every fold (each sample is held out once)."""
    total = sum(f.samples for f in folds)
    outputs = []
    for parts in zip(*(f.outputs for f in folds)):
        weights = [f.samples for f in folds]
        mean = sum(p.cosine_mean * n for p, n in zip(parts, weights)) / total
        std = None
        if all(p.cosine_std is not None for p in parts) and total > 1:
            # Law of total variance: within-fold spread plus the spread of the fold means.
            within = sum((n - 1) * p.cosine_std**2 for p, n in zip(parts, weights))
            between = sum(n * (p.cosine_mean - mean) ** 2 for p, n in zip(parts, weights))
            std = math.sqrt(max(within + between, 0.0) / (total - 1))
        agreement = (
            sum(p.agreement * n for p, n in zip(parts, weights)) / total if all(p.agreement is not None for p in parts) else None
        )
        first = parts[0]
        outputs.append(first.model_copy(update={
            "agreement": agreement, "cosine_mean": mean, "cosine_std": std, "cosine_min": min(p.cosine_min for p in parts),
            "sqnr_db": min(p.sqnr_db for p in parts), "max_abs_error": max(p.max_abs_error for p in parts),
            "bound": None, "verdict": None, "more_samples": None,
        }))
    pooled = _aggregate(outputs, total)
    if all(f.accuracy is not None and f.accuracy_original is not None for f in folds):
        pooled.accuracy = sum(f.accuracy * f.samples for f in folds) / total
        pooled.accuracy_original = sum(f.accuracy_original * f.samples for f in folds) / total
        pooled.accuracy_drop = pooled.accuracy_original - pooled.accuracy
    return pooled


def assess(fidelity: Fidelity, tolerance: Tolerance) -> tuple[Verdict, str]:
    """The tolerance's verdict, output by output, each on its one-sided 95% bound; fills the outputs'
    bound, verdict and more_samples, and the fidelity's verdict. The candidate's verdict is the worst."""
    parts, verdicts, more = [], [], []
    for output in fidelity.outputs:
        checks = _checks(output, tolerance)
        results = [_check(fidelity, output, metric, threshold) for metric, threshold in checks]
        if not results:
            continue
        verdict = _worst([r[0] for r in results])
        output.verdict = verdict
        output.bound = results[0][3]
        needed = [r[2] for r in results if r[0] == "undecided"]
        output.more_samples = max(needed) if verdict == "undecided" and all(n is not None for n in needed) else None
        verdicts.append(verdict)
        if verdict == "undecided":
            more.append(output.more_samples)
        parts.append(f"{output.name} ({output.kind or 'output'}): " + ", ".join(r[1] for r in results) + f" → {verdict}")
    verdict = _worst(verdicts) if verdicts else "missed"
    fidelity.verdict = verdict
    fidelity.more_samples = max(more) if verdict == "undecided" and more and all(m is not None for m in more) else None
    why = "; ".join(parts) if parts else f"{tolerance.metric} is not available"
    if verdict == "undecided":
        settle = (f"about {fidelity.more_samples} more held-out (unlabeled) samples at the same figures would settle it"
                  if fidelity.more_samples is not None else "more held-out samples would settle it")
        why += f". {fidelity.samples} held-out samples are too few to certify this: {settle}"
    return verdict, why


def _checks(output: OutputFidelity, tolerance: Tolerance) -> list[tuple[str, float]]:
    by = output.judged_by or ("agreement" if output.agreement is not None and tolerance.metric == "agreement" else "cosine")
    floor = tolerance.cosine_floor
    if by == "agreement":
        return [("agreement", tolerance.threshold)] + ([("cosine", floor)] if floor is not None else [])
    if by == "cosine":
        threshold = tolerance.threshold if tolerance.metric == "cosine" else (floor if floor is not None else DEFAULT_COSINE)
        return [("cosine", threshold)]
    if by == "accuracy_drop":
        return [("accuracy_drop", tolerance.threshold)] + ([("cosine", floor)] if floor is not None else [])
    return [("sqnr_db", tolerance.threshold)]


def _check(fidelity: Fidelity, output: OutputFidelity, metric: str, threshold: float) -> tuple[Verdict, str, int | None, float | None]:
    """(verdict, explanation, further samples that would settle it, bound)."""
    n = fidelity.samples
    if metric == "accuracy_drop":
        value = fidelity.accuracy_drop
        if value is None:
            return "missed", "accuracy_drop is not available (it needs labels)", None, None
        return ("met" if value <= threshold else "missed"), f"accuracy_drop {value:.4f} (allowed ≤ {threshold:g}, point value)", None, None
    if metric == "sqnr_db":
        value = output.sqnr_db
        return ("met" if value >= threshold else "missed"), f"sqnr_db {value:.1f} dB (required ≥ {threshold:g}, point value)", None, None
    if metric == "agreement":
        value = output.agreement
        if value is None:
            return "missed", "agreement is not available (it needs a class-score [N, C] output)", None, None
        bound = agreement_bound(value, n)
        needed = samples_for_agreement(value, threshold)
        how = "Wilson"
    else:
        value, bound = output.cosine_mean, mean_bound(output.cosine_mean, output.cosine_std, n)
        needed = samples_for_mean(value, output.cosine_std, threshold) if output.cosine_std is not None else None
        how = "Student t"
    text = f"{metric} {value:.4f}"
    if bound is not None:
        text += f", 95% one-sided {how} bound {bound:.4f} over {n} samples"
    text += f" (required ≥ {threshold:g})"
    if value < threshold:
        return "missed", text, None, bound
    if bound is not None and bound >= threshold:
        return "met", text, None, bound
    return "undecided", text, (max(needed - n, 1) if needed is not None else None), bound


def could_meet(fidelity: Fidelity, tolerance: Tolerance) -> bool:
    """Whether a candidate that missed the tolerance on these samples may still be within it: every
    check it missed has its one-sided 95% upper bound at the threshold or above (one flip in 64
    class scores, say), so more held-out samples could show either. Counted and mean metrics only."""
    missed = 0
    for output in fidelity.outputs:
        for metric, threshold in _checks(output, tolerance):
            if metric == "agreement" and output.agreement is not None:
                value = output.agreement
                upper = wilson_interval(value, fidelity.samples, Z_95_ONE_SIDED)[1]
            elif metric == "cosine":
                value, lower = output.cosine_mean, mean_bound(output.cosine_mean, output.cosine_std, fidelity.samples)
                upper = None if lower is None else 2 * value - lower
            else:
                return False
            if value >= threshold:
                continue
            if upper is None or upper < threshold:
                return False
            missed += 1
    return missed > 0


def _worst(verdicts: list[Verdict]) -> Verdict:
    return "missed" if "missed" in verdicts else "undecided" if "undecided" in verdicts else "met"


def first_class_scores(outputs: NamedOutputs) -> str | None:
    """The first output with an [N, C] shape (whether or not it is judged as class scores)."""
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
        cosine_std=float(cosine.std()) if len(cosine) > 1 else None,
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
