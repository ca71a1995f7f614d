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


# Raw scores are taken as logits when the winner clearly stands out: the runner-up's gap to the
# top-1 entry is at least this share of the top-1 entry's lead over the row's median, in 3 of 4
# samples. Measured: a trained digits classifier 0.48 (25th percentile); Gaussian rows (untrained
# heads, embeddings) 0.13 at C = 10 and 0.04 at C = 384; landmark-like positions in [0.2, 0.8] 0.09.
# Under-trained classifiers fall short (Fashion-MNIST CNNs at 69-81% accuracy: 0.11-0.26), so the
# behaviour read in _by_behaviour tells them apart.
LOGIT_MARGIN_SHARE = 0.35
# At most this many raw columns read as a regression (a box is 4, a point 2): too few to tell logits
# from coordinates, and judging coordinates by their argmax is what rejected ONet's int8 variants.
FEW_COLUMNS = 4
# Raw scores without a clear winner still read as logits when all three hold over the batch (at
# least MIN_ROWS rows, FEW_COLUMNS < C <= MAX_CLASSES). Measured on the original's outputs over a
# calibration batch of 512 rows (32 rows in brackets). "Trained classifiers": the bench's (C = 10;
# Fashion-MNIST CNN, DenseNet, depthwise, ResNet, class + box head at 69-81% accuracy, digits CNN,
# MLP, LSTM), tests/digits_models.py's weak classifier (78%). "Random tiny models": the raw outputs of
# tests/tiny_models.py with C >= 5 (seeded random weights on Gaussian inputs).
# - WINNER_SPREAD: the winning column varies: exp(entropy of which column wins) is at least this
#   share of min(C, rows / 4), and at least 3. Trained classifiers 9.0-10.0 columns (7.2-9.2); real
#   ONet's landmarks [N, 10] (facenet-pytorch's weights, on photo crops, noise and Fashion images)
#   1.8-2.6 (1.5-2.0); random-weight ResNet-18 heads (C = 10, 16, 64) 1.0-2.5; random tiny models
#   up to 7.0 of 8: this alone does not tell them apart.
# - OFFSET_SHARE: after centring each row, the share of the spread that fixed column means explain
#   is at most this. Trained classifiers 0.02-0.24; ONet's landmarks 0.91-0.99 (each x and y sits
#   at its place); the bench's class + box model's box 0.96; random ResNet-18 heads 0.84-0.99;
#   random tiny models 0.08-0.19 where their winners vary.
# - CONFIDENCE_LIFT: the softmax of the rows is confident: its mean top probability, rescaled so
#   that uniform is 0 and certain is 1. Trained classifiers 0.47-0.94 (0.63-0.97), a digits CNN
#   stopped early by SGD at 77% 0.35; random tiny models 0.01-0.19; ONet's landmarks 0.03-0.04; random
#   ResNet-18 heads 0.001-0.012.
# MiniLM's [N, 384] embedding is past MAX_CLASSES (its winners: 96 of 384 in effect).
WINNER_SPREAD = 0.5
OFFSET_SHARE = 0.5
CONFIDENCE_LIFT = 0.25
MIN_ROWS = 16
MAX_CLASSES = 64


def output_kind(tensor: torch.Tensor) -> tuple[str, str]:
    """(kind, why) from the original's outputs alone; kind is one of report.OutputKind.

    Conservative: an output is called class scores only when its rows are probabilities or
    log-probabilities, or raw scores that behave like a classifier's logits (a clear winner, or a
    winner that moves between many columns with a confident softmax). Anything unsure is judged by
    cosine, which every output supports."""
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
    unclear = f"raw scores without a clear winner per row (runner-up gap {share:.2f} of the lead, under {LOGIT_MARGIN_SHARE})"
    if columns > MAX_CLASSES:
        return "embedding", f"{unclear}, and {columns} columns (over {MAX_CLASSES}): not read as logits"
    if len(rows) < MIN_ROWS:
        return "regression", f"{unclear}, and {len(rows)} samples are too few to tell logits by how they vary: not read as logits"
    return _by_behaviour(rows, unclear)


def _by_behaviour(rows: torch.Tensor, unclear: str) -> tuple[str, str]:
    """Weak classifiers' logits: the winner moves between many columns, fixed column offsets do not
    set it, and the softmax is confident. Coordinates and untrained heads fail at least one."""
    count, columns = rows.shape
    winners, needed = _winners_in_effect(rows), max(3.0, WINNER_SPREAD * min(columns, count / 4))
    offsets, lift = _offset_share(rows), _confidence_lift(rows)
    signals = [  # (holds, as a classifier's logits, as something else)
        (winners >= needed, f"the top column varies across samples ({winners:.1f} of {columns} win in effect)",
         f"the top column is one of a few ({winners:.1f} of {columns} win in effect, a classifier's: {needed:.1f} or more)"),
        (offsets <= OFFSET_SHARE, f"fixed column offsets do not set the values ({offsets:.0%} of the spread)",
         f"fixed column offsets set the values, as in coordinates ({offsets:.0%} of the spread, over {OFFSET_SHARE:.0%})"),
        (lift >= CONFIDENCE_LIFT, f"the softmax is confident ({lift:.2f} above uniform)",
         f"the softmax is near uniform, as in an untrained head ({lift:.2f} above uniform, under {CONFIDENCE_LIFT})"),
    ]
    if all(holds for holds, _, _ in signals):
        return "class_scores", f"{unclear}, but read as a classifier's logits: " + "; ".join(said for _, said, _ in signals)
    return "regression", f"{unclear}, not read as logits: " + "; ".join(said for holds, _, said in signals if not holds)


def _margin_share(rows: torch.Tensor) -> float:
    top = rows.topk(2, dim=1).values
    lead = (top[:, 0] - rows.median(dim=1).values).clamp_min(1e-12)
    return float(((top[:, 0] - top[:, 1]) / lead).quantile(0.25))


def _winners_in_effect(rows: torch.Tensor) -> float:
    """exp(entropy) of which column wins: C when every column wins equally often, 1 when one always does."""
    shares = torch.bincount(rows.argmax(1), minlength=rows.shape[1]).double() / len(rows)
    shares = shares[shares > 0]
    return float((-(shares * shares.log()).sum()).exp())


def _offset_share(rows: torch.Tensor) -> float:
    """Share of the row-centred values' variance that the column means explain (0: none, 1: all)."""
    centred = rows - rows.mean(1, keepdim=True)
    between, within = float(centred.mean(0).var()), float(centred.var(0).mean())
    return between / max(between + within, 1e-300)


def _confidence_lift(rows: torch.Tensor) -> float:
    """Mean top softmax probability, rescaled so that a uniform softmax is 0 and a certain one 1."""
    uniform = 1 / rows.shape[1]
    return (float(torch.softmax(rows, 1).max(1).values.mean()) - uniform) / (1 - uniform)


def concat_outputs(parts: list[NamedOutputs]) -> NamedOutputs:
    """Join per-chunk outputs along the batch dimension."""
    names = [name for name, _ in parts[0]]
    return [(name, torch.cat([part[i][1] for part in parts])) for i, name in enumerate(names)]
