"""Ops that mix positions: pooling, non-nearest interpolation, reductions, softmax and other normalisations
along a dim. Removing one position would change the others, so the atoms each output position mixes become one
unit (:func:`mix_positions`); channels that are not mixed stay apart (a pooled channel is still one channel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..._tensors import map_tensors
from ..atoms import constant_ids
from ..idtensors import Why
from ..interpreter import AtomInterpreter
from ..registry import Rule, arg, rule
from .elementwise import elementwise


def mix_positions(it: AtomInterpreter, src: torch.Tensor, dims: list[int], value: Any, why: Why) -> Any:
    """Positions along ``dims`` are mixed: each slice's atoms become one unit, placed in the output."""
    nd = src.dim()
    dims = sorted({d % nd for d in dims})
    keep = [d for d in range(nd) if d not in dims]
    t = src.permute(keep + dims).reshape([src.shape[d] for d in keep] + [-1]) if dims else src.unsqueeze(-1)
    lead = t.shape[:-1]
    flat = t.reshape(-1, t.shape[-1])
    atoms = it.per_index(flat, 0, why) if flat.shape[0] else np.zeros(0, dtype=np.int64)
    row = torch.as_tensor(atoms, dtype=torch.float64).reshape(lead)

    def place(r: torch.Tensor) -> torch.Tensor:
        if r.dim() == nd:  # keepdim / pooling: mixed dims stay, other dims as before
            shaped = row
            for d in dims:
                shaped = shaped.unsqueeze(d)
            if tuple(r.shape[d] for d in keep) != tuple(lead):
                return constant_ids(r)
            return shaped.expand(r.shape).clone()
        if r.dim() == len(keep) and tuple(r.shape) == tuple(lead):
            return row.clone()
        return constant_ids(r)

    return map_tensors(value, place, None)


def pooling(k: int) -> Rule:
    """The rule of a pooling over the last ``k`` dims (1d, 2d, 3d): each channel's positions are mixed, so the
    atoms of one channel's slice become one unit; channels stay apart."""

    def pool(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
        src = it.ids_of(args[0])
        return mix_positions(it, src, list(range(src.dim() - k, src.dim())), value, it.at_node("pooled"))

    return pool


_POOL_1D = [
    F.max_pool1d,
    F.avg_pool1d,
    F.adaptive_avg_pool1d,
    F.adaptive_max_pool1d,
    F.lp_pool1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.LPPool1d,
    torch.max_pool1d,
    torch.avg_pool1d,
    torch.adaptive_avg_pool1d,
    torch.adaptive_max_pool1d,
    F.max_pool1d_with_indices,
]
_POOL_2D = [
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.lp_pool2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    torch.max_pool2d,
    F.max_pool2d_with_indices,
    nn.FractionalMaxPool2d,
]
_POOL_3D = [
    F.max_pool3d,
    F.avg_pool3d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool3d,
    nn.MaxPool3d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool3d,
    torch.max_pool3d,
    F.max_pool3d_with_indices,
]
rule(*_POOL_1D)(pooling(1))
rule(*_POOL_2D)(pooling(2))
rule(*_POOL_3D)(pooling(3))


@rule(F.interpolate, F.upsample, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def interpolate(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Nearest resizing copies positions (applied to ids); other modes mix a channel's positions."""
    src = it.ids_of(args[0])
    if n.op == "call_module":
        mod = it.module_of(n)
        mode = "bilinear" if isinstance(mod, nn.UpsamplingBilinear2d) else getattr(mod, "mode", "nearest")
    else:
        mode = it.value_of(arg(args, kwargs, 4, "mode", "nearest"))
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(src, size=tuple(value.shape[2:]), mode=mode)
    return mix_positions(it, src, list(range(2, src.dim())), value, it.at_node("interpolated"))


def _reduce_dims(it: AtomInterpreter, args: tuple, kwargs: dict, src: torch.Tensor, default_all: bool) -> list[int]:
    dim = it.value_of(arg(args, kwargs, 1, "dim", None))
    if dim is None:
        return list(range(src.dim())) if default_all else [-1]
    if isinstance(dim, (tuple, list)):
        return list(dim)
    return [dim]


_REDUCTIONS = [
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.max,
    torch.min,
    torch.std,
    torch.var,
    torch.prod,
    torch.logsumexp,
    torch.argmax,
    torch.argmin,
    torch.norm,
    torch.linalg.vector_norm,
    torch.cumsum,
    torch.cumprod,
    torch.nansum,
    torch.nanmean,
    torch.median,
    torch.all,
    torch.any,
    torch.count_nonzero,
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "std",
    "var",
    "prod",
    "logsumexp",
    "argmax",
    "argmin",
    "norm",
    "cumsum",
    "cumprod",
    "nansum",
    "nanmean",
    "median",
    "all",
    "any",
    "count_nonzero",
]


@rule(*_REDUCTIONS)
def reduction(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Reductions mix the positions along their dims (the atoms there become one unit)."""
    src = it.ids_of(args[0])
    if not isinstance(src, torch.Tensor):
        return it.unknown(n, value)
    other = arg(args, kwargs, 1, "dim", None)
    if isinstance(other, fx.Node) and isinstance(it.value_of(other), torch.Tensor):  # torch.max(a, b)
        return elementwise(it, n, args, kwargs, value)
    dims = _reduce_dims(it, args, kwargs, src, default_all=True)
    return mix_positions(it, src, dims, value, it.at_node("reduced"))


_ALONG_A_DIM = [
    F.softmax,
    F.log_softmax,
    F.softmin,
    torch.softmax,
    torch.log_softmax,
    "softmax",
    "log_softmax",
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softmin,
    nn.Softmax2d,
    F.normalize,
    nn.LocalResponseNorm,
    F.local_response_norm,
]


@rule(*_ALONG_A_DIM)
def softmax(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Normalisation along a dim: removing a position changes every other one, so they go together."""
    src = it.ids_of(args[0])
    if n.op == "call_module":
        mod = it.module_of(n)
        dim = getattr(mod, "dim", None)
        if isinstance(mod, (nn.Softmax2d, nn.LocalResponseNorm)):
            dim = -3
    elif n.target in (F.normalize,):
        dim = it.value_of(arg(args, kwargs, 2, "dim", 1))
    elif n.target is F.local_response_norm:
        dim = 1
    else:
        dim = it.value_of(arg(args, kwargs, 1, "dim", None))
    if dim is None:
        dim = 0 if src.dim() in (0, 1, 3) else 1
    return mix_positions(it, src, [dim], value, it.at_node("normalised along a dim"))
