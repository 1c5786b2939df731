"""Per-element ops: pass-through (activations, dropout, casts) and elementwise combination with broadcasting.

Pass-through ops keep every position's atom. Elementwise ops over several tensors unify their operands' atoms
position by position (a residual add couples both branches' channels), except that an operand broadcast over a
dim where the other's atoms vary couples nothing: a ``[B,1,H,W]`` spatial gate multiplies every channel, yet
removing one channel changes nothing in the gate. An SE scale ``[B,C,1,1]`` still couples its channels to ``x``.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..atoms import constant_ids, unique_pair_arrays
from ..interpreter import AtomInterpreter
from ..registry import rule

_UNARY_FUNCS = [
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.softplus,
    F.mish,
    F.hardtanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.softsign,
    F.tanhshrink,
    F.logsigmoid,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.erf,
    torch.sin,
    torch.cos,
    torch.square,
    torch.reciprocal,
    torch.sign,
    torch.floor,
    torch.ceil,
    torch.round,
    torch.nan_to_num,
    torch.log1p,
    torch.expm1,
    operator.neg,
    operator.pos,
    F.hardshrink,
    F.softshrink,
    torch.nn.functional.threshold,
]

_UNARY_METHODS = [
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "neg",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "detach",
    "cpu",
    "cuda",
    "erf",
    "square",
    "reciprocal",
    "sign",
    "floor",
    "ceil",
    "round",
    "requires_grad_",
    "hardswish",
    "sin",
    "cos",
    "log1p",
    "expm1",
    "nan_to_num",
    "exp_",
    "neg_",
]

_UNARY_MODULES = [
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
]

try:  # torchvision wraps it as an fx leaf function; per sample it is a scalar factor, per element a no-op
    from torchvision.ops import StochasticDepth, stochastic_depth

    _UNARY_FUNCS += [stochastic_depth]
    _UNARY_MODULES += [StochasticDepth]
except ImportError:  # pragma: no cover - torchvision is a dependency, but the rules do not need it
    pass


@rule(*_UNARY_FUNCS, *_UNARY_METHODS, *_UNARY_MODULES)
def passthrough(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Per-element ops keep every position's atom."""
    src = it.ids_of(args[0]) if args else None
    if isinstance(src, torch.Tensor) and isinstance(value, torch.Tensor) and src.shape == value.shape:
        return src
    return elementwise(it, n, args, kwargs, value)


def _combine(it: AtomInterpreter, a: torch.Tensor, b: torch.Tensor, out_shape: torch.Size) -> torch.Tensor:
    """Unify two operands' atoms position by position; a broadcast operand couples only one-to-one."""
    nd = len(out_shape)
    a_shape = (1,) * (nd - a.dim()) + tuple(a.shape)
    b_shape = (1,) * (nd - b.dim()) + tuple(b.shape)
    a_bc = any(s == 1 and o > 1 for s, o in zip(a_shape, out_shape))
    b_bc = any(s == 1 and o > 1 for s, o in zip(b_shape, out_shape))
    ae = a.reshape(a_shape).expand(out_shape)
    be = b.reshape(b_shape).expand(out_shape)
    af, bf = ae.reshape(-1), be.reshape(-1)
    both = (af >= 0) & (bf >= 0)
    if both.any():
        xs, ys = unique_pair_arrays(af[both], bf[both])
        keep = np.ones(len(xs), dtype=bool)
        # a broadcast operand's atom meeting several atoms of the other couples none of them (a spatial gate)
        if a_bc:
            _, inverse, counts = np.unique(xs, return_inverse=True, return_counts=True)
            keep &= counts[inverse] == 1
        if b_bc:
            _, inverse, counts = np.unique(ys, return_inverse=True, return_counts=True)
            keep &= counts[inverse] == 1
        it.unify_pairs(zip(xs[keep].tolist(), ys[keep].tolist()))
    first, second = (be, ae) if (a_bc and not b_bc) else (ae, be)
    return torch.where(first >= 0, first, second).clone()


_BINARY_FUNCS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.pow,
    operator.mod,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.true_divide,
    torch.maximum,
    torch.minimum,
    torch.where,
    torch.pow,
    torch.eq,
    torch.ne,
    torch.gt,
    torch.lt,
    torch.ge,
    torch.le,
    torch.addcmul,
    torch.addcdiv,
    torch.lerp,
    torch.masked_fill,
    torch.fmod,
    torch.remainder,
    torch.atan2,
    torch.hypot,
    operator.eq,
    operator.ne,
    operator.gt,
    operator.lt,
    operator.ge,
    operator.le,
    operator.and_,
    operator.or_,
    torch.logical_and,
    torch.logical_or,
    torch.subtract,
    torch.multiply,
    torch.divide,
]

_BINARY_METHODS = [
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "pow",
    "pow_",
    "maximum",
    "minimum",
    "masked_fill",
    "masked_fill_",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "addcmul",
    "addcmul_",
    "lerp",
    "where",
    "fmod",
    "remainder",
    "__add__",
    "__mul__",
    "__sub__",
    "__truediv__",
    "__radd__",
    "__rmul__",
    "__rsub__",
    "__rtruediv__",
    "truediv",
    "subtract",
    "multiply",
    "divide",
    "logical_and",
    "logical_or",
]


@rule(*_BINARY_FUNCS, *_BINARY_METHODS)
def elementwise(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Elementwise ops over several tensors (scalars couple nothing)."""
    if not isinstance(value, torch.Tensor):
        return it.unknown(n, value)
    nodes = [a for a in list(args) + list(kwargs.values()) if isinstance(a, fx.Node)]
    it.value_use(nodes)  # x / math.sqrt(x.size(-1))
    operands = [it.ids_of(a) for a in nodes]
    operands = [o for o in operands if isinstance(o, torch.Tensor)]
    if not operands:
        return constant_ids(value)
    out = operands[0]
    for other in operands[1:]:
        out = _combine(it, out, other, value.shape)
    if out.shape != value.shape:
        out = out.reshape((1,) * (value.dim() - out.dim()) + tuple(out.shape)).expand(value.shape).clone()
    return out
