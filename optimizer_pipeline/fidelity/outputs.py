"""Model outputs as a flat list of named tensors, whatever structure forward returns."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidModelError

NamedOutputs = list[tuple[str, torch.Tensor]]


def flatten_outputs(value: Any, prefix: str = "output") -> NamedOutputs:
    """Tensor -> [("output", t)]; tuple/list -> output_0, output_1...; dict -> its keys (nested: dotted)."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        flat: NamedOutputs = []
        for position, item in enumerate(value):
            flat.extend(flatten_outputs(item, f"{prefix}_{position}"))
        return flat
    if isinstance(value, dict):
        flat = []
        for key, item in value.items():
            name = str(key) if prefix == "output" else f"{prefix}.{key}"
            flat.extend(flatten_outputs(item, name))
        return flat
    raise InvalidModelError(
        f"forward returned a {type(value).__name__} at {prefix!r}; optiserve serves models that return a Tensor, "
        f"a tuple/list of Tensors or a dict of Tensors"
    )


def is_class_scores(tensor: torch.Tensor) -> bool:
    """[N, C] floating scores with C > 1: the shape on which top-1 agreement can be measured at all.
    Whether it is *judged* by agreement is `output_kind`'s call."""
    return tensor.dim() == 2 and tensor.shape[1] > 1 and tensor.is_floating_point()


# Raw scores are taken as logits only when the winner clearly stands out: the runner-up's gap to the
# top-1 entry is at least this share of the top-1 entry's lead over the row's median, in 3 of 4
# samples. Measured: a trained digits classifier 0.48 (25th percentile); Gaussian rows (untrained
# heads, embeddings) 0.13 at C = 10 and 0.04 at C = 384; landmark-like positions in [0.2, 0.8] 0.09.
LOGIT_MARGIN_SHARE = 0.35
# At most this many raw columns read as a regression (a box is 4, a point 2): too few to tell logits
# from coordinates, and judging coordinates by their argmax is what rejected ONet's int8 variants.
FEW_COLUMNS = 4


def output_kind(tensor: torch.Tensor) -> tuple[str, str]:
    """(kind, why) from the original's outputs alone; kind is one of report.OutputKind.

    Conservative: an output is called class scores only when its rows are probabilities or
    log-probabilities, or raw scores with a clear winner that varies between samples. Anything
    unsure is judged by cosine, which every output supports."""
    if not is_class_scores(tensor):
        return "other", f"shape {list(tensor.shape)} is not an [N, C] score matrix"
    rows = tensor.detach().double()
    columns = rows.shape[1]
    if (rows >= -1e-6).all() and ((rows.sum(1) - 1).abs() <= 1e-3).all():
        return "class_scores", "every row is non-negative and sums to 1: probabilities"
    if (rows <= 1e-6).all() and ((rows.exp().sum(1) - 1).abs() <= 1e-3).all():
        return "class_scores", "every row's exponentials sum to 1: log-probabilities"
    if ((rows.norm(dim=1) - 1).abs() <= 1e-3).all():
        return "embedding", "every row has unit L2 norm: an embedding"
    if ((rows >= 0) & (rows <= 1)).all():
        return "regression", "every entry lies in [0, 1] but rows are not distributions: positions or independent (multi-label) scores, whose argmax means nothing"
    if columns <= FEW_COLUMNS:
        return "regression", f"{columns} raw columns: as likely coordinates (a box is 4) as logits, and an argmax over coordinates means nothing"
    if len(rows) >= 8 and rows.argmax(1).unique().numel() == 1:
        return "other", "the largest entry is the same column in every sample: its argmax carries no information"
    share = _margin_share(rows)
    if share >= LOGIT_MARGIN_SHARE:
        return "class_scores", f"raw scores with a clear winner (runner-up gap {share:.2f} of the lead, 25th percentile): logits"
    return "embedding" if columns > 64 else "regression", (
        f"raw scores without a clear winner (runner-up gap {share:.2f} of the lead, 25th percentile, "
        f"under {LOGIT_MARGIN_SHARE}): not read as logits"
    )


def _margin_share(rows: torch.Tensor) -> float:
    top = rows.topk(2, dim=1).values
    lead = (top[:, 0] - rows.median(dim=1).values).clamp_min(1e-12)
    return float(((top[:, 0] - top[:, 1]) / lead).quantile(0.25))


def concat_outputs(parts: list[NamedOutputs]) -> NamedOutputs:
    """Join per-chunk outputs along the batch dimension."""
    names = [name for name, _ in parts[0]]
    return [(name, torch.cat([part[i][1] for part in parts])) for i, name in enumerate(names)]
