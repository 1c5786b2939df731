"""Data movement (view, reshape, permute, cat, split, getitem, pad, pixel and channel shuffle...): the op itself
is applied to the id tensor, so concat offsets, flatten blocks and shuffles come out exact with no per-op code.

Where a size is a literal in the forward code (``view(b, 512 * 7 * 7)``, a split into pieces of 4, ``x[:, :3]``),
it cannot follow pruning: the atoms along that dim are tied into one unit, with the node named as the reason.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..atoms import NO_ATOM, constant_ids
from ..interpreter import AtomInterpreter
from ..registry import arg, rule
from ..sizeflow import SizeSource, size_args, tie_reshape_sizes


def literal_dims(size_args: tuple) -> list[int]:
    """Output dims whose size is an int literal in the forward code (not -1, not derived from a tensor)."""
    if len(size_args) == 1 and isinstance(size_args[0], (tuple, list, torch.Size)):
        size_args = tuple(size_args[0])
    return [d for d, s in enumerate(size_args) if isinstance(s, int) and s > 1]


def _apply_on_ids(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run the node's own op with id tensors in place of its tensor arguments."""
    id_args = it.value_of(args)
    id_kwargs = it.value_of(kwargs)
    first = it.ids_of(args[0])
    id_args = (first,) + tuple(id_args[1:])  # a list of tensors for cat/stack: their id tensors
    if n.op == "call_method":
        method = {"view": "reshape", "view_as": "reshape_as"}.get(n.target, n.target)  # ids need not be contiguous
        return getattr(first, method)(*id_args[1:], **id_kwargs)
    if n.op == "call_module":
        return it.module_of(n)(*id_args, **id_kwargs)
    return n.target(*id_args, **id_kwargs)


_MOVE_FUNCS = [
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.squeeze,
    torch.unsqueeze,
    torch.roll,
    torch.flip,
    torch.movedim,
    torch.t,
    torch.swapaxes,
    torch.swapdims,
    torch.tile,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    torch.pixel_shuffle,
    torch.pixel_unshuffle,
    torch.hstack,
    torch.vstack,
    torch.concatenate,
    torch.repeat_interleave,
    torch.broadcast_to,
]

_MOVE_METHODS = [
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "expand",
    "repeat",
    "flip",
    "roll",
    "t",
    "movedim",
    "unflatten",
    "swapaxes",
    "swapdims",
    "tile",
    "expand_as",
    "view_as",
    "reshape_as",
    "unsqueeze_",
    "squeeze_",
    "transpose_",
    "repeat_interleave",
    "broadcast_to",
]

_MOVE_MODULES = [nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle]


@rule(*_MOVE_FUNCS, *_MOVE_METHODS, *_MOVE_MODULES)
def movement(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Index bookkeeping: the op moves ids exactly as it moves values."""
    out = _apply_on_ids(it, n, args, kwargs)
    literal: list[int] = []
    if n.target in ("view", "reshape", "expand", "broadcast_to") or n.target is torch.reshape:
        literal = literal_dims(tuple(args[1:]))
    elif n.target == "unflatten":
        dim = it.value_of(arg(args, kwargs, 1, "dim"))
        sizes = arg(args, kwargs, 2, "sizes")
        dim = dim % (out.dim() - len(sizes) + 1)
        literal = [dim + i for i in literal_dims(tuple(sizes))]
    # (an nn.Unflatten module's literal sizes are not tied: the branch meant for it could never run, since a
    # call_module target is always a str; tying them would change behaviour, so it waits for its own change)
    if isinstance(out, torch.Tensor):
        for d in literal:
            it.tie(out, d, it.at_node("size fixed in forward"))
        _sizes_from_tensors(it, n, args, kwargs, out)
    return out


def _sizes_from_tensors(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
    """A reshape whose sizes were read from tensors (``q.reshape(B, N, heads, C // heads)``) must still fit
    after pruning: :func:`~slimnet.groups.sizeflow.tie_reshape_sizes` couples or ties the dims involved."""
    if not isinstance(args[0], fx.Node):
        return
    if n.target in ("view", "reshape") or n.target is torch.reshape:
        tie_reshape_sizes(it, out, size_args(tuple(args[1:]), it.sizes), args[0])
    elif n.target in ("view_as", "reshape_as") and isinstance(args[1], fx.Node):
        other = it.ids_of(args[1])
        if isinstance(other, torch.Tensor):
            tie_reshape_sizes(it, out, [SizeSource(args[1], other, d) for d in range(other.dim())], args[0])
    elif n.target == "unflatten":
        dim = it.value_of(arg(args, kwargs, 1, "dim"))
        sizes = list(arg(args, kwargs, 2, "sizes"))
        tie_reshape_sizes(it, out, size_args(tuple(sizes), it.sizes), args[0], dim % (out.dim() - len(sizes) + 1))


@rule(F.pad, "pad")
def pad(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Padding: constant padding holds no atom; reflect/replicate copy atoms like any data movement."""
    x = it.ids_of(args[0])
    padding = it.value_of(arg(args, kwargs, 1, "pad"))
    mode = it.value_of(arg(args, kwargs, 2, "mode", "constant"))
    if mode == "constant":
        return F.pad(x, padding, mode="constant", value=NO_ATOM)
    return F.pad(x, padding, mode=mode)


@rule(
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
)
def pad_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    x = it.ids_of(args[0])
    if isinstance(
        mod, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
    ):
        return F.pad(x, mod.padding, mode="constant", value=NO_ATOM)
    return mod(x)


@rule(operator.getitem)
def getitem(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Indexing: a tuple element, or a tensor slice; a partial slice along varying atoms ties them."""
    src = it.ids_of(args[0])
    idx = it.value_of(args[1])
    if isinstance(src, (tuple, list)):
        return src[idx]
    if not isinstance(src, torch.Tensor):
        return constant_ids(value) if isinstance(value, torch.Tensor) else None
    _tie_partial_index(it, src, idx, n.args[1])
    return src[idx]


@rule(operator.setitem)
def setitem(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``x[idx] = v`` (and ``x[idx] += v``, traced as getitem, iadd, setitem): the written positions take ``v``'s
    atoms, in ``x``'s id tensor itself, as the op wrote into ``x``; positions picked by fixed indices are tied,
    as for reading them."""
    dst, src = it.ids_of(args[0]), it.ids_of(args[2])
    if not isinstance(dst, torch.Tensor):
        return None
    idx = it.value_of(args[1])
    _tie_partial_index(it, dst, idx)
    try:
        dst[idx] = src if isinstance(src, torch.Tensor) else NO_ATOM
    except RuntimeError:  # ids that are a broadcast view cannot be written into: refuse (poison), never guess
        return None
    return dst


def _tie_partial_index(it: AtomInterpreter, src: torch.Tensor, idx: Any, traced: Any = None) -> None:
    """Positions picked by fixed indices do not follow pruning: tie the atoms along such a dim. A slice whose
    bounds are sizes of parameters (``traced``: the index as traced; Phi-3 slices its fused qkv at
    ``num_heads * head_dim``, a size attribute of :mod:`slimnet.cut.sizes` that the surgeon recomputes) follows
    pruning, as a reshape by such a size does (:mod:`slimnet.groups.sizeflow`)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    raw = traced if isinstance(traced, tuple) else (traced,)
    raw = raw if len(raw) == len(items) else (None,) * len(items)
    dim = 0
    for item, node in zip(items, raw):
        if item is Ellipsis:
            dim = src.dim() - (len(items) - 1 - items.index(Ellipsis)) - sum(1 for i in items if i is None)
            continue
        if item is None:
            continue
        if dim >= src.dim():
            break
        whole = isinstance(item, slice) and item == slice(None)
        if not whole and not _follows(it, node):
            it.tie(src, dim, it.at_node("indexed with fixed positions"))
        dim += 1


def _follows(it: AtomInterpreter, item: Any) -> bool:
    """A traced slice with no step whose bounds are each absent or computed from parameter sizes only."""
    if not isinstance(item, slice) or item.step is not None:
        return False
    bounds = [b for b in (item.start, item.stop) if b is not None]
    if not bounds or not all(isinstance(b, fx.Node) for b in bounds):
        return False
    return all((s := it.sizes.sources(b)) and all(x.node.op == "get_attr" for x in s) for b in bounds)


@rule(torch.split, torch.chunk, "split", "chunk", torch.tensor_split, "tensor_split", torch.unbind, "unbind")
def split(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Splits: equal pieces whose size follows the input keep position j of each piece together; pieces of
    literal sizes cannot follow pruning at all."""
    src = it.ids_of(args[0])
    name = n.target if isinstance(n.target, str) else n.target.__name__
    dim = it.value_of(arg(args, kwargs, 1 if name == "unbind" else 2, "dim", 0)) % src.dim()
    pieces = len(value)
    why = it.at_node("split")
    size = arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    follows = name == "chunk" or (name == "split" and isinstance(size, fx.Node))  # piece size from the tensor
    if follows and src.shape[dim] % pieces == 0:
        it.tie_pieces(src, dim, pieces, why)
    else:
        it.tie(src, dim, why)
    if name == "unbind":
        return tuple(src.unbind(dim))
    return tuple(torch.split(src, [r.shape[dim] for r in value], dim))


@rule(
    torch.narrow,
    "narrow",
    torch.select,
    "select",
    torch.index_select,
    "index_select",
    torch.gather,
    "gather",
    torch.take_along_dim,
)
def select(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Fixed-position selection along a dim: the atoms there cannot be pruned independently."""
    src = it.ids_of(args[0])
    dim = it.value_of(arg(args, kwargs, 1, "dim"))
    if isinstance(dim, int):
        it.tie(src, dim, it.at_node("selected by position"))
    return _apply_on_ids(it, n, args, kwargs)


@rule(nn.ChannelShuffle, torch.channel_shuffle, *([F.channel_shuffle] if hasattr(F, "channel_shuffle") else []))
def channel_shuffle(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    src = it.ids_of(args[0])
    if n.op == "call_module":
        groups = it.module_of(n).groups
    else:
        groups = it.value_of(arg(args, kwargs, 1, "groups"))
    it.tie_pieces(src, 1, groups, it.at_node("channel shuffle"))
    return torch.channel_shuffle(src, groups)
