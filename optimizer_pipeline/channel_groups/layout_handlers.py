"""Handlers for the ops that move the channel dim (view, reshape, flatten, permute, transpose,
indexing, size): they track channels onto the new dim, split them into attention heads, or rewrite a
shape constant. Registered into registry.HANDLERS like the rest (one handler per op family)."""

from __future__ import annotations

import math

from . import graph as g
from .analysis import GraphWalk, NotUnderstood, ShapeRewrite, Tracked
from .handlers import _int_constant, _tracked_input, on_tracked_input
from .registry import handles


# -- ops that move the channel dim -------------------------------------------------------------------
@handles("aten::view", "aten::reshape", "aten::flatten", "aten::squeeze", "aten::unsqueeze")
def reshape(walk: GraphWalk, node: g.Node) -> None:
    tracked = _tracked_input(walk, node)
    if tracked is None:
        return
    output = node.output()
    heads = _head_split(walk.shape(node.inputsAt(0)), tracked.dim, walk.shape(output))
    if heads is not None and node.kind() in ("aten::view", "aten::reshape"):
        _split_into_heads(walk, node, tracked, *heads)
        return
    dim, block = _channel_position(walk.shape(node.inputsAt(0)), tracked.dim, walk.shape(output))
    # Merging the channel dim with the dims after it turns channel c into features [c*block, (c+1)*block).
    elements = [element for element in tracked.elements for _ in range(block)]
    if node.kind() in ("aten::view", "aten::reshape"):
        _rewrite_size(walk, node, dim, elements)
    walk.set_tracked(output, dim, elements)


def _head_split(before: tuple[int, ...], dim: int, after: tuple[int, ...]) -> tuple[int, int] | None:
    """(heads dim, head width) when a reshape splits the channel dim into [heads, head width] in place."""
    if len(after) != len(before) + 1 or after[:dim] != before[:dim] or after[dim + 2:] != before[dim + 1:]:
        return None
    if after[dim] * after[dim + 1] != before[dim] or after[dim] == 1 or after[dim + 1] == 1:
        return None
    return dim, after[dim + 1]


def _split_into_heads(walk: GraphWalk, node: g.Node, tracked: Tracked, dim: int, width: int) -> None:
    """Attention heads: each head is one unit, coupled with its `width` channels; the head count is rewritten."""
    heads = walk.elements.fresh(len(tracked.elements) // width)
    walk.elements.unify([head for head in heads for _ in range(width)], tracked.elements)
    _rewrite_size(walk, node, dim, heads)
    walk.set_tracked(node.output(), dim, heads)


def _channel_position(before: tuple[int, ...], dim: int, after: tuple[int, ...]) -> tuple[int, int]:
    """(output dim, block) when a reshape keeps each channel as one contiguous block of features."""
    outer, channels, trailing = math.prod(before[:dim]), before[dim], before[dim + 1:]
    blocks = {math.prod(trailing[:k]) for k in range(len(trailing) + 1)}
    for position, size in enumerate(after):
        if math.prod(after[:position]) == outer and size % channels == 0 and size // channels in blocks:
            return position, size // channels
    raise NotUnderstood(f"it reshapes {list(before)} to {list(after)}, splitting or mixing the channel dim")


def _rewrite_size(walk: GraphWalk, node: g.Node, dim: int, elements: list[int]) -> None:
    """A traced view holds its sizes as constants: the channel entry must follow the pruning."""
    sizes = node.inputsAt(1)
    producer = sizes.node()
    if producer.kind() == "prim::ListConstruct":
        if len(sizes.uses()) != 1:
            raise NotUnderstood("its size list is shared with other ops")
        entry = g.constant(producer.inputsAt(dim))
        if entry is not None and entry != -1:
            walk.rewrites.append(ShapeRewrite(producer, dim, None, elements))
        return
    entries = _int_constant(sizes, "size")
    if entries[dim] != -1:
        walk.rewrites.append(ShapeRewrite(node, 1, dim, elements))


@handles("aten::permute")
@on_tracked_input
def permute(walk: GraphWalk, node: g.Node, tracked: Tracked, rank: int) -> None:
    order = [d % rank for d in _int_constant(node.inputsAt(1), "order")]
    walk.set_tracked(node.output(), order.index(tracked.dim), tracked.elements)


@handles("aten::transpose", "aten::transpose_", "aten::t")
@on_tracked_input
def transpose(walk: GraphWalk, node: g.Node, tracked: Tracked, rank: int) -> None:
    if node.kind() == "aten::t":
        first, second = 0, rank - 1
    else:
        first, second = (_int_constant(v, "dim") % rank for v in list(node.inputs())[1:3])
    swapped = {first: second, second: first}.get(tracked.dim, tracked.dim)
    walk.set_tracked(node.output(), swapped, tracked.elements)


@handles("aten::slice", "aten::narrow", "aten::select", "aten::index_select")
@on_tracked_input
def index(walk: GraphWalk, node: g.Node, tracked: Tracked, rank: int) -> None:
    dim = _int_constant(node.inputsAt(1), "dim") % rank
    if dim == tracked.dim:
        if walk.shape(node.output()) != walk.shape(node.inputsAt(0)):
            raise NotUnderstood("it indexes into the channel dim")
        if node.kind() != "aten::slice":  # a full slice (x[:, :]) is a no-op; anything else is not
            raise NotUnderstood("it indexes into the channel dim")
    removed_before = node.kind() == "aten::select" and dim < tracked.dim
    walk.set_tracked(node.output(), tracked.dim - removed_before, tracked.elements)


@handles("aten::size")
@on_tracked_input
def size(walk: GraphWalk, node: g.Node, tracked: Tracked, rank: int) -> None:
    """x.size(d) is fine for other dims; reading the channel count bakes it into later arithmetic."""
    if node.inputsSize() > 1:
        read = [_int_constant(node.inputsAt(1), "dim")]
    else:  # the whole size list: fine if only its length and other dims are read
        users = [use.user for use in node.output().uses() if use.user.kind() != "aten::len"]
        if any(user.kind() != "aten::__getitem__" for user in users):
            raise NotUnderstood("it reads the channel count at run time")
        read = [_int_constant(user.inputsAt(1), "index") for user in users]
    if tracked.dim in {d % rank for d in read}:
        raise NotUnderstood("it reads the channel count at run time")
